//! The tasks of one job phase and who holds them: index ranges waiting to
//! be handed out, the range each worker is working on, and what happens
//! when a worker leaves (its range goes back to the front) or answers for a
//! range it does not hold (ignored). No sockets, no clocks: the scheduler
//! drives it with the roster's view of the workers.

use std::collections::{HashMap, VecDeque};

/// Index range `[first, first + count)` of a job's items.
pub type Task = (u64, u64);

/// Index ranges of `n` items in tasks of `batch`.
pub fn ranges(n: u64, batch: u64) -> VecDeque<Task> {
    let batch = batch.max(1);
    (0..n.div_ceil(batch)).map(|g| (g * batch, batch.min(n - g * batch))).collect()
}

/// What to do with a worker's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// The worker held this task: take the result.
    Accepted,
    /// Not a task this worker holds (a late answer for a reassigned task).
    Stray,
}

#[derive(Debug, Default)]
pub struct TaskBoard {
    pending: VecDeque<Task>,
    inflight: HashMap<u64, Task>,
}

impl TaskBoard {
    pub fn new(pending: VecDeque<Task>) -> Self {
        Self { pending, inflight: HashMap::new() }
    }

    /// Puts back the tasks of workers that are no longer members (`alive`
    /// says who is), at the front of the queue; returns `(worker, task)`
    /// for each.
    pub fn reclaim(&mut self, alive: impl Fn(u64) -> bool) -> Vec<(u64, Task)> {
        let mut gone: Vec<(u64, Task)> = self.inflight.iter().filter(|(w, _)| !alive(**w)).map(|(w, t)| (*w, *t)).collect();
        gone.sort();
        for (w, task) in gone.iter().rev() {
            self.inflight.remove(w);
            self.pending.push_front(*task);
        }
        gone
    }

    /// Of `idle`, the workers that hold no task of this board.
    pub fn free<'a>(&'a self, idle: &'a [u64]) -> impl Iterator<Item = u64> + 'a {
        idle.iter().copied().filter(|w| !self.inflight.contains_key(w))
    }

    /// The next task to hand out.
    pub fn next_task(&mut self) -> Option<Task> {
        self.pending.pop_front()
    }

    /// Task `task` went to `worker`.
    pub fn assigned(&mut self, worker: u64, task: Task) {
        self.inflight.insert(worker, task);
    }

    /// Task `task` could not be handed out after all: it goes back first.
    pub fn unassigned(&mut self, task: Task) {
        self.pending.push_front(task);
    }

    /// `worker` answered for `task`.
    pub fn receive(&mut self, worker: u64, task: Task) -> Receipt {
        if self.inflight.get(&worker) == Some(&task) {
            self.inflight.remove(&worker);
            Receipt::Accepted
        } else {
            Receipt::Stray
        }
    }

    pub fn is_done(&self) -> bool {
        self.pending.is_empty() && self.inflight.is_empty()
    }

    /// No worker holds a task (everything left is waiting).
    pub fn is_idle(&self) -> bool {
        self.inflight.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_items_in_whole_batches() {
        assert_eq!(ranges(5, 2), VecDeque::from([(0, 2), (2, 2), (4, 1)]));
        assert!(ranges(0, 4).is_empty());
    }

    #[test]
    fn tasks_go_to_free_workers_and_come_back_when_a_worker_leaves() {
        let mut b = TaskBoard::new(ranges(6, 2));
        for w in b.free(&[1, 2]).collect::<Vec<_>>() {
            let t = b.next_task().unwrap();
            b.assigned(w, t);
        }
        assert_eq!(b.free(&[1, 2, 3]).collect::<Vec<_>>(), vec![3], "busy workers get no second task");
        // Worker 2 leaves with (2, 2): it is the next task handed out.
        assert_eq!(b.reclaim(|w| w != 2), vec![(2, (2, 2))]);
        assert_eq!(b.next_task(), Some((2, 2)));
        b.assigned(3, (2, 2));
        assert_eq!(b.receive(1, (0, 2)), Receipt::Accepted);
        assert_eq!(b.receive(1, (0, 2)), Receipt::Stray, "an answer counts once");
        assert_eq!(b.receive(2, (2, 2)), Receipt::Stray, "a late answer from the worker that left");
        assert_eq!(b.receive(3, (2, 2)), Receipt::Accepted);
        assert!(!b.is_done());
        let t = b.next_task().unwrap();
        b.assigned(1, t);
        assert_eq!(b.receive(1, (4, 2)), Receipt::Accepted);
        assert!(b.is_done() && b.next_task().is_none());
    }

    #[test]
    fn a_task_that_could_not_be_sent_goes_back_first() {
        let mut b = TaskBoard::new(ranges(4, 2));
        let t = b.next_task().unwrap();
        b.unassigned(t);
        assert_eq!(b.next_task(), Some((0, 2)));
        assert!(b.is_idle());
    }
}
