//! A small, safe reader for the pickles CIFAR-10's python version ships:
//! a dict whose `data` is a numpy uint8 array `[N, 3072]` and whose `labels`
//! is a list of ints.
//!
//! Why not the `serde-pickle` crate (1.2.0, tried on the batches the tests
//! generate, 10,000 images each, release build, 2 shared cores):
//! - it drops what identifies a numpy array: `_reconstruct` and `BUILD`
//!   leave only the state tuple, and a dtype only its byte order, so a
//!   uint8 array cannot be told from an int8 one, nor int64 labels from
//!   float64 ones;
//! - hostile input aborts the process instead of failing: a million nested
//!   lists overflow its recursive conversion's stack, and a pickle that
//!   memoizes one large bytes object and fetches it a few hundred times
//!   makes it copy the object each time (a 10 MB object fetched 400 times
//!   asked for 4 GB and aborted under a 2 GB limit), where this reader
//!   refuses the first at 1,024 nested containers and shares the second;
//! - it decodes a batch in 22 ms (Python 2 pickle) and 28 ms (protocol 5),
//!   medians of 9, against 4 ms here with the array and labels extracted
//!   (it copies the 30 MB of pixels in growing chunks); both take about
//!   0.4 s on Python 3's protocol 2, whose pixels are a latin-1 text.
//!
//! So this is a minimal pickle machine (protocols 2 to 5) that executes
//! nothing: calls are recorded as objects, and only the few constructors
//! numpy and Python use for this data are interpreted (`_reconstruct` +
//! `BUILD` as written by Python 2's cPickle and by protocols 2 to 4,
//! `_frombuffer` for protocol 5, `_codecs.encode` for bytes in Python 3's
//! protocol 2).
//!
//! One concept in one file: the opcode machine, its value model and its
//! error messages only make sense together, and its tests sit beside it.

use std::cell::RefCell;
use std::rc::Rc;

#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too large for i64 (only its existence matters here).
    BigInt,
    Float,
    Str(Rc<str>),
    /// `bytes`, `bytearray`, or a Python 2 `str`.
    Bytes(Rc<[u8]>),
    List(Rc<RefCell<Vec<Value>>>),
    Tuple(Rc<[Value]>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(Rc<(String, String)>),
    /// The result of calling something: `callable(*args)`, then `BUILD` state.
    Object(Rc<RefCell<Object>>),
}

#[derive(Debug)]
pub struct Object {
    pub callable: Value,
    pub args: Vec<Value>,
    pub state: Option<Value>,
}

impl Value {
    /// The text of a `str` or (Python 2) byte string.
    pub fn text(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    fn global_name(&self) -> Option<(&str, &str)> {
        match self {
            Value::Global(g) => Some((g.0.as_str(), g.1.as_str())),
            _ => None,
        }
    }

    fn items(&self) -> Option<Vec<Value>> {
        match self {
            Value::Tuple(t) => Some(t.to_vec()),
            Value::List(l) => Some(l.borrow().clone()),
            _ => None,
        }
    }

    fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Global(_) => "class or function",
            Value::Object(_) => "object",
        }
    }

    /// Looks up a key given as text in a dict whose keys are `str` or bytes.
    pub fn dict_get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(d) => d.borrow().iter().find(|(k, _)| k.text() == Some(key)).map(|(_, v)| v.clone()),
            _ => None,
        }
    }

    pub fn dict_keys(&self) -> Vec<String> {
        match self {
            Value::Dict(d) => {
                d.borrow().iter().map(|(k, _)| k.text().map(str::to_string).unwrap_or_else(|| format!("<{}>", k.kind()))).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// Why the bytes are not a pickle this reader can run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickleError {
    #[error("not a pickle of protocol 2 or later (those start with byte 80; this file starts with {head})")]
    NotAPickle { head: String },
    #[error("pickle protocol {0} is newer than this reader knows (0-5)")]
    Protocol(u8),
    #[error("the pickle ends early: {needed} bytes needed at offset {at} of {len} (truncated file?)")]
    Truncated { needed: usize, at: usize, len: usize },
    #[error("the pickle ends inside a text line")]
    UnterminatedLine,
    #[error("length {0} is too large")]
    TooLong(u64),
    #[error("more than {MAX_NESTED} nested lists, dicts, tuples or objects: not a CIFAR-10 batch")]
    TooDeep,
    #[error("memo index {0} is implausibly large (malformed pickle)")]
    MemoIndex(usize),
    #[error("memo entry {0} is not set (malformed pickle)")]
    MemoUnset(usize),
    /// An opcode whose operands are not what it needs.
    #[error("{what} at offset {at} (malformed pickle)")]
    Malformed { what: &'static str, at: usize },
    #[error("the pickle refers to out-of-band buffers, which a file cannot carry")]
    OutOfBand,
    #[error(
        "unsupported pickle opcode 0x{op:02x} at offset {at} (this reader knows the opcodes of protocols 2 to 5; \
         is this a pickle at all?)"
    )]
    Opcode { op: u8, at: usize },
}

/// Why a pickled value is not the numpy array or label list expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArrayError {
    /// What was found instead: "a list", "a numpy.dtype object", ...
    #[error("expected a numpy array, found {0}")]
    NotAnArray(String),
    #[error("a numpy array without its state (truncated pickle?)")]
    NoState,
    #[error("a numpy array state of {0} items, expected 4 or 5")]
    StateLength(usize),
    #[error("a Fortran-order numpy array; CIFAR-10 batches are C-order")]
    FortranOrder,
    #[error("numpy array data is a {0}, expected bytes (an object array?)")]
    DataNotBytes(&'static str),
    #[error("a numpy _frombuffer call with unexpected arguments")]
    FromBuffer,
    #[error("numpy array shape is not a tuple of sizes")]
    Shape,
    #[error("numpy dtype is a {0}")]
    DtypeKind(&'static str),
    #[error("numpy dtype in an unknown form")]
    DtypeForm,
    #[error("a label that is a {0}")]
    Label(&'static str),
    #[error("labels of numpy type {0}")]
    LabelType(String),
}

/// Runs the pickle machine over `data`; the error says what is wrong and where.
pub fn load(data: &[u8]) -> Result<Value, PickleError> {
    if data.first() != Some(&0x80) {
        let head: Vec<String> = data.iter().take(4).map(|b| format!("{b:02x}")).collect();
        let head = if head.is_empty() { "nothing, it is empty".to_string() } else { head.join(" ") };
        return Err(PickleError::NotAPickle { head });
    }
    Machine { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: Vec::new(), nested: 0 }.run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: Vec<Option<Value>>,
    nested: usize,
}

/// A memo index far beyond what any real pickle of this data uses.
const MAX_MEMO: usize = 1 << 20;
/// Containers (lists, dicts, tuples, objects) a pickle may put inside other
/// containers. A CIFAR-10 batch nests a few dozen; the cap bounds the
/// nesting depth, and so the recursion when a hostile pickle's values are
/// dropped.
const MAX_NESTED: usize = 1024;

impl Machine<'_> {
    /// Counts the containers among `items`, which are about to be put
    /// inside another container, against `MAX_NESTED`.
    fn nest(&mut self, items: &[Value]) -> Result<(), PickleError> {
        self.nested += items.iter().filter(|v| matches!(v, Value::List(_) | Value::Tuple(_) | Value::Dict(_) | Value::Object(_))).count();
        if self.nested > MAX_NESTED {
            return Err(PickleError::TooDeep);
        }
        Ok(())
    }

    /// A malformed pickle, at the current offset.
    fn malformed(&self, what: &'static str) -> PickleError {
        PickleError::Malformed { what, at: self.pos }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or(PickleError::Truncated {
            needed: n,
            at: self.pos,
            len: self.data.len(),
        })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize, PickleError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]) as usize)
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<usize, PickleError> {
        let b = self.take(8)?;
        let v = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        usize::try_from(v).map_err(|_| PickleError::TooLong(v))
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or(PickleError::UnterminatedLine)?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.malformed("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.malformed("stack underflow"))
    }

    fn top(&mut self) -> Result<&mut Value, PickleError> {
        let underflow = self.malformed("stack underflow");
        self.stack.last_mut().ok_or(underflow)
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let m = self.marks.pop().ok_or_else(|| self.malformed("no MARK before this"))?;
        if m > self.stack.len() {
            return Err(self.malformed("MARK past the stack"));
        }
        Ok(self.stack.split_off(m))
    }

    fn memo_put(&mut self, idx: usize) -> Result<(), PickleError> {
        if idx >= MAX_MEMO {
            return Err(PickleError::MemoIndex(idx));
        }
        let v = self.top()?.clone();
        if self.memo.len() <= idx {
            self.memo.resize(idx + 1, None);
        }
        self.memo[idx] = Some(v);
        Ok(())
    }

    fn memo_get(&mut self, idx: usize) -> Result<(), PickleError> {
        let v = self.memo.get(idx).cloned().flatten().ok_or(PickleError::MemoUnset(idx))?;
        self.stack.push(v);
        Ok(())
    }

    fn bytes(&mut self, n: usize) -> Result<Value, PickleError> {
        Ok(Value::Bytes(Rc::from(self.take(n)?)))
    }

    fn unicode(&mut self, n: usize) -> Result<Value, PickleError> {
        let at = self.pos;
        let s = std::str::from_utf8(self.take(n)?).map_err(|_| PickleError::Malformed { what: "a str that is not UTF-8", at })?;
        Ok(Value::Str(Rc::from(s)))
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        self.nest(&items)?;
        if !items.len().is_multiple_of(2) {
            return Err(self.malformed("SETITEMS with an odd number of values"));
        }
        let not_dict = self.malformed("SETITEM on something that is not a dict");
        let Value::Dict(d) = self.top()? else {
            return Err(not_dict);
        };
        let mut d = d.borrow_mut();
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }

    fn append(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        self.nest(&items)?;
        let not_list = self.malformed("APPEND on something that is not a list");
        match self.top()? {
            Value::List(l) => {
                l.borrow_mut().extend(items);
                Ok(())
            }
            // Sets (EMPTY_SET + ADDITEMS) are kept as lists.
            _ => Err(not_list),
        }
    }

    fn call(&mut self, callable: Value, args: Vec<Value>) -> Value {
        match (callable.global_name(), args.as_slice()) {
            // Python 3, protocol 2: bytes are pickled as _codecs.encode(latin-1 text, 'latin1').
            (Some(("_codecs", "encode")), [Value::Str(s), enc]) if matches!(enc.text(), Some("latin1" | "latin-1")) => {
                let bytes: Option<Vec<u8>> = s.chars().map(|c| u8::try_from(c as u32).ok()).collect();
                match bytes {
                    Some(b) => Value::Bytes(Rc::from(b)),
                    None => Value::Object(Rc::new(RefCell::new(Object { callable, args, state: None }))),
                }
            }
            (Some(("__builtin__" | "builtins", "bytes" | "bytearray")), []) => Value::Bytes(Rc::from(Vec::new())),
            (Some(("__builtin__" | "builtins", "bytes" | "bytearray")), [Value::Bytes(b)]) => Value::Bytes(b.clone()),
            _ => Value::Object(Rc::new(RefCell::new(Object { callable, args, state: None }))),
        }
    }

    fn run(mut self) -> Result<Value, PickleError> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                b'.' => return self.pop(), // STOP
                0x80 => {
                    // PROTO
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(PickleError::Protocol(p));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only
                }
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.stack.push(Value::Dict(Rc::default())),
                b']' | 0x8f => self.stack.push(Value::List(Rc::default())), // EMPTY_LIST, EMPTY_SET
                b')' => self.stack.push(Value::Tuple(Rc::from(Vec::new()))),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64))
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64))
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64))
                }
                0x8a | 0x8b => {
                    // LONG1, LONG4: little-endian two's complement
                    let n = if op == 0x8a { self.u8()? as usize } else { self.u32()? as usize };
                    let b = self.take(n)?;
                    let v = if n == 0 {
                        Value::Int(0)
                    } else if n <= 8 {
                        let mut buf = if b[n - 1] & 0x80 != 0 { [0xFF; 8] } else { [0; 8] };
                        buf[..n].copy_from_slice(b);
                        Value::Int(i64::from_le_bytes(buf))
                    } else {
                        Value::BigInt
                    };
                    self.stack.push(v);
                }
                b'I' | b'L' => {
                    // INT, LONG (text, protocol 0)
                    let l = self.line()?;
                    let t = l.trim_end_matches('L');
                    let v = match t {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        _ => t.parse().map(Value::Int).unwrap_or(Value::BigInt),
                    };
                    self.stack.push(v);
                }
                b'G' => {
                    self.take(8)?; // BINFLOAT: no float matters here
                    self.stack.push(Value::Float);
                }
                b'U' | b'C' => {
                    // SHORT_BINSTRING (Python 2 str), SHORT_BINBYTES
                    let n = self.u8()? as usize;
                    let v = self.bytes(n)?;
                    self.stack.push(v);
                }
                b'T' | b'B' => {
                    // BINSTRING, BINBYTES
                    let n = self.u32()? as usize;
                    let v = self.bytes(n)?;
                    self.stack.push(v);
                }
                0x8e | 0x96 => {
                    // BINBYTES8, BYTEARRAY8
                    let n = self.u64()?;
                    let v = self.bytes(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.unicode(n)?;
                    self.stack.push(v);
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.unicode(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = self.u64()?;
                    let v = self.unicode(n)?;
                    self.stack.push(v);
                }
                0x97 => return Err(PickleError::OutOfBand),
                0x98 => {} // READONLY_BUFFER: no-op for our purposes
                b't' => {
                    let items = self.pop_mark()?;
                    self.nest(&items)?;
                    self.stack.push(Value::Tuple(Rc::from(items)));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.nest(&items)?;
                    self.stack.push(Value::Tuple(Rc::from(items)));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.nest(&items)?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(Rc::default()));
                    self.set_items(items)?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                0x91 => {
                    // FROZENSET
                    let items = self.pop_mark()?;
                    self.nest(&items)?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'q' => {
                    let i = self.u8()? as usize;
                    self.memo_put(i)?
                }
                b'r' => {
                    let i = self.u32()? as usize;
                    self.memo_put(i)?
                }
                0x94 => {
                    let i = self.memo.len();
                    self.memo_put(i)?
                }
                b'p' => {
                    let i = self.line()?.parse().map_err(|_| self.malformed("a PUT with a bad index"))?;
                    self.memo_put(i)?
                }
                b'h' => {
                    let i = self.u8()? as usize;
                    self.memo_get(i)?
                }
                b'j' => {
                    let i = self.u32()? as usize;
                    self.memo_get(i)?
                }
                b'g' => {
                    let i = self.line()?.parse().map_err(|_| self.malformed("a GET with a bad index"))?;
                    self.memo_get(i)?
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(Rc::new((module, name))));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(Rc::new((m.to_string(), n.to_string())))),
                        _ => return Err(self.malformed("STACK_GLOBAL without two str")),
                    }
                }
                b'R' | 0x81 => {
                    // REDUCE: callable(*args); NEWOBJ: cls.__new__(cls, *args)
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let args = args.items().ok_or_else(|| self.malformed("REDUCE with arguments that are not a tuple"))?;
                    self.nest(&args)?;
                    let v = self.call(callable, args);
                    self.stack.push(v);
                }
                0x92 => {
                    // NEWOBJ_EX
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let args = args.items().ok_or_else(|| self.malformed("NEWOBJ_EX with arguments that are not a tuple"))?;
                    self.nest(&args)?;
                    let v = self.call(callable, args);
                    self.stack.push(v);
                }
                b'b' => {
                    let state = self.pop()?;
                    self.nest(std::slice::from_ref(&state))?;
                    if let Value::Object(o) = self.top()? {
                        o.borrow_mut().state = Some(state);
                    }
                }
                _ => return Err(PickleError::Opcode { op, at }),
            }
        }
    }
}

/// A numpy array rebuilt from its pickle: element type, shape and the raw
/// C-order bytes.
#[derive(Debug)]
pub struct NdArray {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Rc<[u8]>,
}

fn is_numpy(module: &str, prefix: &str) -> bool {
    module == format!("numpy.core.{prefix}") || module == format!("numpy._core.{prefix}")
}

/// Interprets `v` as a numpy array pickled by any numpy from 1.x to 2.x.
pub fn ndarray(v: &Value) -> Result<NdArray, ArrayError> {
    let Value::Object(o) = v else {
        return Err(ArrayError::NotAnArray(format!("a {}", v.kind())));
    };
    let o = o.borrow();
    let name = o.callable.global_name().map(|(m, n)| (m.to_string(), n.to_string()));
    match name.as_ref().map(|(m, n)| (m.as_str(), n.as_str())) {
        Some((m, "_reconstruct")) if is_numpy(m, "multiarray") => {
            let state = o.state.as_ref().and_then(Value::items).ok_or(ArrayError::NoState)?;
            // (version, shape, dtype, is_fortran, raw) or, before version 1, without the version.
            let s = match state.len() {
                5 => &state[1..],
                4 => &state[..],
                n => return Err(ArrayError::StateLength(n)),
            };
            let shape = shape_of(&s[0])?;
            let dtype = dtype_of(&s[1])?;
            if s[2].as_int() == Some(1) && shape.len() > 1 {
                return Err(ArrayError::FortranOrder);
            }
            let Value::Bytes(data) = &s[3] else {
                return Err(ArrayError::DataNotBytes(s[3].kind()));
            };
            Ok(NdArray { dtype, shape, data: data.clone() })
        }
        Some((m, "_frombuffer")) if is_numpy(m, "numeric") => {
            // _frombuffer(buffer, dtype, shape, order)
            let [Value::Bytes(data), dtype, shape, order] = o.args.as_slice() else {
                return Err(ArrayError::FromBuffer);
            };
            if order.text() == Some("F") {
                return Err(ArrayError::FortranOrder);
            }
            Ok(NdArray { dtype: dtype_of(dtype)?, shape: shape_of(shape)?, data: data.clone() })
        }
        Some((m, n)) => Err(ArrayError::NotAnArray(format!("a {m}.{n} object"))),
        None => Err(ArrayError::NotAnArray("an unknown object".into())),
    }
}

fn shape_of(v: &Value) -> Result<Vec<usize>, ArrayError> {
    v.items().ok_or(ArrayError::Shape)?.iter().map(|d| d.as_int().and_then(|i| usize::try_from(i).ok()).ok_or(ArrayError::Shape)).collect()
}

fn dtype_of(v: &Value) -> Result<String, ArrayError> {
    if let Some(t) = v.text() {
        return Ok(t.trim_start_matches(['|', '<', '=']).to_string());
    }
    let Value::Object(o) = v else {
        return Err(ArrayError::DtypeKind(v.kind()));
    };
    let o = o.borrow();
    match (o.callable.global_name(), o.args.first().and_then(Value::text)) {
        (Some(("numpy", "dtype")), Some(t)) => Ok(t.trim_start_matches(['|', '<', '=']).to_string()),
        _ => Err(ArrayError::DtypeForm),
    }
}

/// Labels as a list of ints (CIFAR's `labels`), also accepting a numpy
/// integer array.
pub fn int_list(v: &Value) -> Result<Vec<i64>, ArrayError> {
    if let Some(items) = v.items() {
        return items.iter().map(|x| x.as_int().ok_or(ArrayError::Label(x.kind()))).collect();
    }
    let a = ndarray(v)?;
    match a.dtype.as_str() {
        "u1" => Ok(a.data.iter().map(|&b| b as i64).collect()),
        "i8" => Ok(a.data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()),
        "i4" => Ok(a.data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as i64).collect()),
        t => Err(ArrayError::LabelType(t.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_python2_style_numpy_pickle() {
        // {'data': uint8 array [1, 3] = [1, 2, 3], 'labels': [7]} as Python 2's
        // cPickle (protocol 2) writes it.
        let mut p = b"\x80\x02}q\x01(U\x04dataq\x02cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04K\x00\x85U\x01b\x87Rq\x05(K\x01K\x01K\x03\x86cnumpy\ndtype\nq\x06U\x02u1K\x00K\x01\x87Rq\x07(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x03".to_vec();
        p.extend_from_slice(b"\x01\x02\x03tbU\x06labelsq\x08]q\tK\x07au.");
        let v = load(&p).unwrap();
        let a = ndarray(&v.dict_get("data").unwrap()).unwrap();
        assert_eq!((a.dtype.as_str(), a.shape.as_slice(), &*a.data), ("u1", &[1usize, 3][..], &[1u8, 2, 3][..]));
        assert_eq!(int_list(&v.dict_get("labels").unwrap()).unwrap(), vec![7]);
    }

    #[test]
    fn every_truncation_and_byte_flip_is_handled() {
        let mut p = b"\x80\x02}q\x01(U\x04dataq\x02cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04K\x00\x85U\x01b\x87Rq\x05(K\x01K\x01K\x03\x86cnumpy\ndtype\nq\x06U\x02u1K\x00K\x01\x87Rq\x07(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x03".to_vec();
        p.extend_from_slice(b"\x01\x02\x03tbU\x06labelsq\x08]q\tK\x07au.");
        for n in 0..p.len() {
            assert!(load(&p[..n]).is_err(), "prefix {n}");
        }
        for i in 0..p.len() {
            for b in [0u8, 0x28, 0x2e, 0x68, 0x80, 0x94, 0xff] {
                let mut q = p.clone();
                q[i] = b;
                if let Ok(v) = load(&q) {
                    // Whatever it parses to, interpreting it must not panic either.
                    if let Some(d) = v.dict_get("data") {
                        let _ = ndarray(&d);
                    }
                    if let Some(l) = v.dict_get("labels") {
                        let _ = int_list(&l);
                    }
                }
            }
        }
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [&b""[..], b"\x80\x02", b"\x80\x02}q\x01(U\xffab", b"hello", b"\x80\x02t.", b"\x80\x02h\x05.", b"\x80\x09."] {
            assert!(load(bad).is_err(), "{bad:?}");
        }
        // A million nested lists is refused before it is built.
        let mut deep = b"\x80\x02".to_vec();
        deep.extend(std::iter::repeat_n(b']', 1_000_000));
        deep.extend(std::iter::repeat_n(b'a', 999_999));
        deep.push(b'.');
        assert_eq!(load(&deep).unwrap_err(), PickleError::TooDeep);
        assert!(PickleError::TooDeep.to_string().contains("more than 1024 nested"));
        // A length far past the end is refused before anything is allocated.
        let mut huge = b"\x80\x04\x8e".to_vec();
        huge.extend_from_slice(&(1u64 << 62).to_le_bytes());
        huge.extend_from_slice(b"abc");
        let e = load(&huge).unwrap_err();
        assert!(matches!(e, PickleError::Truncated { needed: 0x4000_0000_0000_0000, .. } | PickleError::TooLong(_)), "{e}");
    }

    #[test]
    fn a_memoized_object_fetched_again_and_again_is_shared_not_copied() {
        // 1 MB of bytes memoized, then fetched 100,000 times into a list:
        // copying it each time would ask for 100 GB (serde-pickle does).
        let mut p = b"\x80\x04\x8e".to_vec();
        p.extend_from_slice(&(1u64 << 20).to_le_bytes());
        p.extend(std::iter::repeat_n(7u8, 1 << 20));
        p.extend_from_slice(b"\x94](");
        p.extend(std::iter::repeat_n(*b"h\x00", 100_000).flatten());
        p.extend_from_slice(b"e.");
        let Value::List(l) = load(&p).unwrap() else { panic!("not a list") };
        let l = l.borrow();
        assert_eq!(l.len(), 100_000);
        let (Value::Bytes(first), Value::Bytes(last)) = (&l[0], &l[99_999]) else { panic!("not bytes") };
        assert!(Rc::ptr_eq(first, last));
    }

    #[test]
    fn values_of_the_wrong_type_are_named() {
        // {'data': 'hello', 'labels': [1.5]} (protocol 4).
        let p = b"\x80\x04\x95\x29\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x04data\x94\x8c\x05hello\x94\x8c\x06labels\x94]\x94G?\xf8\x00\x00\x00\x00\x00\x00au.";
        let v = load(p).unwrap();
        assert_eq!(ndarray(&v.dict_get("data").unwrap()).unwrap_err(), ArrayError::NotAnArray("a str".into()));
        assert_eq!(int_list(&v.dict_get("labels").unwrap()).unwrap_err(), ArrayError::Label("float"));
        assert_eq!(ArrayError::Label("float").to_string(), "a label that is a float");
    }
}
