#!/usr/bin/env bash
# Builds the runtime image's file tree: the three binaries and exactly the
# shared libraries they load, taken from a torch wheel's site-packages.
#
#   deploy/image/layout.sh OUT_DIR BIN_DIR SITE_PACKAGES
#
#   OUT_DIR        gets OUT_DIR/opt/ddpm/{bin,lib}; opt/ddpm must not exist
#                  yet (or be empty)
#   BIN_DIR        holds ddpm, ddpm-coord and ddpm-worker (target/release)
#   SITE_PACKAGES  the site-packages of the torch the binaries were linked
#                  against (torch/lib, and nvidia/*/lib for a CUDA wheel)
#
# The Dockerfile's build stage and tests/image_layout.rs both run this, so
# the tree the test starts binaries from is the tree the image ships.
#
# Which libraries: not a hand list, which would drift between the CPU and
# the CUDA wheels and between torch releases, but the closure of
#   - DT_NEEDED entries, resolved against torch/lib and then nvidia/*/lib
#     (the directories the torch libraries' own RUNPATH names), and
#   - library names written as strings inside those libraries that name a
#     file in the same directories: what they dlopen() at run time, and
#   - the libraries ddpm's own code dlopen()s (ddpm_opens below: NCCL).
#     libcudnn.so.9 opens its sub-libraries (graph, ops, cnn, engines...)
#     this way, libtorch_cuda.so opens libtorch_cuda_linalg.so, cuFFT and
#     cuBLASLt open libnvrtc.so.13, which opens libnvrtc-builtins; none of
#     them is a DT_NEEDED, and without them the first convolution, linalg
#     call or runtime-compiled kernel on a GPU fails.
# A library found only by name whose own DT_NEEDED cannot be met in the
# image (libcufile_rdma wants the RDMA stack) is left out: its opener treats
# it as optional, and shipping it could only fail later.
# DT_NEEDED names found in neither directory must be in system-libs.txt
# (glibc, libstdc++, ... of debian:bookworm-slim, or the driver's libcuda).
#
# RUNPATH: the binaries get $ORIGIN/../lib, so they find /opt/ddpm/lib
# wherever the tree lies, without LD_LIBRARY_PATH. The wheel's libraries
# are copied as they are (most already carry $ORIGIN, plus ../../nvidia/...
# entries that simply do not exist in the image), except that one which
# needs or opens another layout library but has no $ORIGIN gets it
# prepended: libnvrtc.so.13 ships without RUNPATH, and its dlopen of
# libnvrtc-builtins (searched through the caller's RUNPATH) fails without
# LD_LIBRARY_PATH. deploy/image/check.sh verifies all of this.
#
# Needs bash 4, coreutils, GNU grep, readelf (binutils) and patchelf.
set -euo pipefail

die() { printf 'layout.sh: %s\n' "$*" >&2; exit 1; }

[ $# -eq 3 ] || die "usage: layout.sh OUT_DIR BIN_DIR SITE_PACKAGES"
out=$1 bin_dir=$2 site=$3
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
binaries=(ddpm ddpm-coord ddpm-worker)

for tool in readelf patchelf grep du install; do
    command -v "$tool" >/dev/null 2>&1 \
        || die "$tool is missing (patchelf: Debian's patchelf, or ddpm_setup_patchelf from deploy/env.sh; readelf: binutils)"
done
[ -d "$site/torch/lib" ] || die "$site/torch/lib does not exist: SITE_PACKAGES must be the site-packages directory that holds the torch package"
for b in "${binaries[@]}"; do
    [ -f "$bin_dir/$b" ] || die "$bin_dir/$b is missing: build the binaries first (cargo build --release --workspace --bins)"
done
root="$out/opt/ddpm"
if [ -e "$root" ] && [ -n "$(ls -A "$root" 2>/dev/null)" ]; then
    die "$root already exists and is not empty; give a fresh OUT_DIR"
fi

start=$SECONDS

declare -A system=()
while read -r name provider; do
    system[$name]=$provider
done < <(grep -vE '^\s*(#|$)' "$here/system-libs.txt")

# Where libraries are looked for, in the order the torch libraries' RUNPATH
# effectively gives: torch/lib ($ORIGIN), then the NVIDIA wheels.
search=("$site/torch/lib")
for d in "$site"/nvidia/*/lib; do
    [ -d "$d" ] && search+=("$d")
done

# The file for library name $1 in the search directories, or nothing. A name
# without a version (libcudnn_graph.so, as cuDNN spells it before adding its
# major) also matches the versioned file (libcudnn_graph.so.9).
find_lib() {
    local name=$1 d f
    for d in "${search[@]}"; do
        if [ -f "$d/$name" ]; then printf '%s\n' "$d/$name"; return; fi
    done
    case $name in
        *.so)
            for d in "${search[@]}"; do
                for f in "$d/$name".[0-9]*; do
                    if [ -f "$f" ]; then printf '%s\n' "$f"; return; fi
                done
            done ;;
    esac
}

declare -A needed_cache=() named_cache=() file_cache=()
needed() {
    [ -n "${needed_cache[$1]+x}" ] \
        || needed_cache[$1]=$(readelf -d "$1" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    printf '%s\n' "${needed_cache[$1]}"
}
# Library names in the file's bytes. LC_ALL=C: bytes, not text, and 10x
# faster on 500 MB libraries.
named() {
    [ -n "${named_cache[$1]+x}" ] \
        || named_cache[$1]=$(LC_ALL=C grep -aoE 'lib[A-Za-z0-9_+-]+(\.[A-Za-z0-9_+-]+)*\.so(\.[0-9]+)*' "$1" | sort -u)
    printf '%s\n' "${named_cache[$1]}"
}
# find_lib, remembered (the closure is computed more than once).
resolve() {
    [ -n "${file_cache[$1]+x}" ] || file_cache[$1]=$(find_lib "$1")
    printf '%s\n' "${file_cache[$1]}"
}

declare -A chosen=()    # file name in the layout -> source path
declare -A why=()       # file name -> what first asked for it
declare -A required=()  # file names some DT_NEEDED asks for
declare -A external=()  # DT_NEEDED names left to the runtime image -> who needs them
declare -A dropped=()   # file names found by name only, that could not load

# Libraries ddpm itself opens by name at run time, never linked: NCCL for
# GPU workers (src/nccl/ looks next to the loaded libtorch first, which in
# the image is this lib/). libtorch_cuda.so needs libnccl.so.2 too today,
# but the image must not depend on that staying so. Absent from a CPU
# wheel, and then not needed: only CUDA workers load it.
ddpm_opens=(libnccl.so.2)

closure() {
    chosen=() why=() required=() external=()
    local queue=() obj obj_name name src file
    for b in "${binaries[@]}"; do queue+=("$bin_dir/$b"); done
    for name in "${ddpm_opens[@]}"; do
        src=$(resolve "$name")
        [ -n "$src" ] || continue
        file=$(basename "$src")
        chosen[$file]=$src
        why[$file]="opened by ddpm at run time (src/nccl)"
        required[$file]=1
        queue+=("$src")
    done
    while [ ${#queue[@]} -gt 0 ]; do
        obj=${queue[0]}
        queue=("${queue[@]:1}")
        obj_name=$(basename "$obj")
        while read -r name; do
            [ -n "$name" ] || continue
            src=$(resolve "$name")
            if [ -z "$src" ]; then
                external[$name]+="${external[$name]:+ }$obj_name"
                continue
            fi
            file=$(basename "$src")
            required[$file]=1
            [ -z "${chosen[$file]:-}" ] || continue
            chosen[$file]=$src
            why[$file]="needed by $obj_name"
            queue+=("$src")
        done < <(needed "$obj")
        # Names inside the binaries are Rust strings, not dlopen targets.
        [ "$obj" != "$bin_dir/$obj_name" ] || continue
        while read -r name; do
            # Python's bindings (libtorch_python.so) are opened by torch's
            # Python module only, never by libtorch.
            case $name in "" | *python*) continue ;; esac
            src=$(resolve "$name")
            [ -n "$src" ] || continue
            file=$(basename "$src")
            [ -z "${chosen[$file]:-}" ] && [ -z "${dropped[$file]:-}" ] || continue
            chosen[$file]=$src
            why[$file]="opened by name from $obj_name"
            queue+=("$src")
        done < <(named "$obj")
    done
}

# Libraries found only by name whose DT_NEEDED the image cannot meet are
# dropped, and the closure is recomputed without them (and so without what
# only they pulled in), until nothing more is dropped.
while :; do
    closure
    more=0
    for file in "${!chosen[@]}"; do
        [ -z "${required[$file]:-}" ] || continue
        while read -r name; do
            [ -n "$name" ] || continue
            if [ -z "$(resolve "$name")" ] && [ -z "${system[$name]:-}" ]; then
                dropped[$file]="needs $name, which the image does not have"
                more=1
                break
            fi
        done < <(needed "${chosen[$file]}")
    done
    [ $more = 1 ] || break
done

for name in "${!external[@]}"; do
    [ -n "${system[$name]:-}" ] \
        || die "$name (needed by ${external[$name]}) is neither in $site/torch/lib or nvidia/*/lib nor provided by the runtime image (deploy/image/system-libs.txt)"
done

mkdir -p "$root/bin" "$root/lib"
for b in "${binaries[@]}"; do
    install -m 0755 "$bin_dir/$b" "$root/bin/$b"
    # Replaces the build machine's absolute torch/lib RUNPATH.
    patchelf --set-rpath '$ORIGIN/../lib' "$root/bin/$b"
    got=$(readelf -d "$root/bin/$b" | sed -n 's/.*(RUNPATH).*\[\(.*\)\]/\1/p')
    [ "$got" = '$ORIGIN/../lib' ] || die "patchelf left $b with RUNPATH '$got', not \$ORIGIN/../lib"
done

declare -A patched=()
files=$(printf '%s\n' "${!chosen[@]}" | sort)
for file in $files; do
    dst="$root/lib/$file"
    # -L: a libtorch tree from a zip may hold symlinks; the layout holds files.
    # DDPM_LAYOUT_LINK=1 (the tests): a hard link where the filesystem allows
    # it, so that a test layout costs no 4 GB copy; never chmod a link (it
    # would change the venv's file too).
    if ! { [ "${DDPM_LAYOUT_LINK:-0}" = 1 ] && ln "$(readlink -f "${chosen[$file]}")" "$dst" 2>/dev/null; }; then
        cp -L "${chosen[$file]}" "$dst"
        chmod 0644 "$dst"
    fi
    # Does it need or open another layout library? Then its RUNPATH must
    # reach its own directory.
    uses=0
    while read -r name; do
        [ -n "$name" ] || continue
        src=$(resolve "$name")
        [ -n "$src" ] || continue
        other=$(basename "$src")
        if [ "$other" != "$file" ] && [ -n "${chosen[$other]:-}" ]; then uses=1; break; fi
    done < <({ needed "${chosen[$file]}"; named "${chosen[$file]}"; })
    [ $uses = 1 ] || continue
    rp=$(readelf -d "$dst" | sed -n 's/.*(R\(UN\)\{0,1\}PATH).*\[\(.*\)\]/\2/p' | head -n1)
    case ":$rp:" in *':$ORIGIN:'* | *':${ORIGIN}:'*) continue ;; esac
    # A linked file is replaced by a copy before patching it.
    if [ "${DDPM_LAYOUT_LINK:-0}" = 1 ]; then
        cp --remove-destination -L "${chosen[$file]}" "$dst"
        chmod 0644 "$dst"
    fi
    patchelf --set-rpath "\$ORIGIN${rp:+:$rp}" "$dst"
    patched[$file]=1
done

echo "layout in $root ($((SECONDS - start)) s):"
for file in $files; do
    note=${why[$file]}
    [ -z "${patched[$file]:-}" ] || note+="; RUNPATH \$ORIGIN added"
    printf '  lib/%-40s %6s  %s\n' "$file" "$(du -h "$root/lib/$file" | cut -f1)" "$note"
done
for b in "${binaries[@]}"; do
    printf '  bin/%-40s %6s\n' "$b" "$(du -h "$root/bin/$b" | cut -f1)"
done
for file in $(printf '%s\n' "${!dropped[@]}" | sort); do
    echo "  left out: $file (${dropped[$file]})"
done
echo "  left to the runtime image: $(printf '%s\n' "${!external[@]}" | sort | tr '\n' ' ')"
echo "  total: $(du -sh "$root/lib" | cut -f1) of libraries, $(du -sh "$root" | cut -f1) in all"
