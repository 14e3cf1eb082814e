#!/usr/bin/env bash
# Checks a runtime layout made by deploy/image/layout.sh, and optionally the
# Dockerfile's runtime stage that ships it.
#
#   deploy/image/check.sh OUT_DIR [DOCKERFILE]
#
# The layout (everything under OUT_DIR, which the runtime stage copies to /):
#   - holds only opt/ddpm/bin/{ddpm,ddpm-coord,ddpm-worker} and regular
#     opt/ddpm/lib/*.so* ELF shared objects: no Python, no headers, no
#     static libraries, no symlinks, nothing else;
#   - every DT_NEEDED of every file resolves either inside the layout,
#     through that file's own search path (its DT_RUNPATH, or its DT_RPATH
#     when it has no DT_RUNPATH, as the torch wheel's libraries do; a
#     DT_RUNPATH is not inherited, so the executable's does not help its
#     libraries), or to a library of debian:bookworm-slim or the NVIDIA
#     driver listed in system-libs.txt;
#   - every library that opens another layout library by name has $ORIGIN
#     in its search path (dlopen searches the caller's);
#   - the binaries' RUNPATH is exactly $ORIGIN/../lib (no DT_RPATH), and no
#     search path names an absolute directory of the build machine;
#   - no file asks for newer glibc / libstdc++ / libgcc symbol versions
#     than bookworm has.
# The Dockerfile's last stage:
#   - is debian:bookworm-slim, runs as a numeric non-root USER,
#   - sets NVIDIA_VISIBLE_DEVICES=all, NVIDIA_DRIVER_CAPABILITIES with
#     compute and utility, HOME and TMPDIR to /tmp (read-only root), PATH
#     with /opt/ddpm/bin and no LD_LIBRARY_PATH,
#   - COPYs only the layout directory that the build stage fills with
#     layout.sh, and installs no Python.
#
# Prints every problem found (not only the first) and exits 1 if any.
set -uo pipefail

[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: check.sh OUT_DIR [DOCKERFILE]" >&2; exit 2; }
out=${1%/}
dockerfile=${2:-}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root="$out/opt/ddpm"
binaries=(ddpm ddpm-coord ddpm-worker)

problems=0
bad() { printf 'check.sh: %s\n' "$*" >&2; problems=$((problems + 1)); }

# Highest symbol versions bookworm provides (glibc 2.36, GCC 12's
# libstdc++6 and libgcc-s1, zlib 1.2.13).
declare -A max_version=([GLIBC]=2.36 [GLIBCXX]=3.4.30 [CXXABI]=1.3.13 [GCC]=12.0.0 [ZLIB]=1.2.12)

declare -A system=()
while read -r name provider; do
    system[$name]=$provider
done < <(grep -vE '^\s*(#|$)' "$here/system-libs.txt")

# Whether dotted version $1 <= $2 (numerically, field by field).
version_le() {
    local IFS=. i a b
    read -r -a a <<<"$1"
    read -r -a b <<<"$2"
    for ((i = 0; i < ${#a[@]} || i < ${#b[@]}; i++)); do
        if ((10#${a[i]:-0} != 10#${b[i]:-0})); then
            ((10#${a[i]:-0} < 10#${b[i]:-0}))
            return
        fi
    done
}

runpath_of() { readelf -d "$1" 2>/dev/null | sed -n 's/.*(RUNPATH).*\[\(.*\)\]/\1/p' | head -n1; }
rpath_of() { readelf -d "$1" 2>/dev/null | sed -n 's/.*(RPATH).*\[\(.*\)\]/\1/p' | head -n1; }
needed_of() { readelf -d "$1" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
elf_type() { readelf -h "$1" 2>/dev/null | sed -n 's/^ *Type: *\([A-Z]*\).*/\1/p'; }

if [ ! -d "$root" ]; then
    bad "$root does not exist: run deploy/image/layout.sh $out BIN_DIR SITE_PACKAGES first"
    exit 1
fi

# --- The file list ----------------------------------------------------------
while IFS= read -r -d '' path; do
    rel=${path#"$out"/}
    case $rel in
        opt | opt/ddpm | opt/ddpm/bin | opt/ddpm/lib)
            [ -d "$path" ] && [ ! -L "$path" ] || bad "$rel must be a plain directory"
            continue ;;
    esac
    if [ -L "$path" ]; then
        bad "$rel is a symlink: the layout holds plain files only (layout.sh copies with cp -L)"
        continue
    fi
    base=${rel##*/}
    case $base in
        *python*)
            bad "$rel: Python has no place in the runtime image (the tch binaries do not load it)"
            continue ;;
        *.h | *.hpp | *.cuh)
            bad "$rel: headers have no place in the runtime image"
            continue ;;
        *.a | *.bc)
            bad "$rel: static libraries have no place in the runtime image"
            continue ;;
    esac
    case $rel in
        opt/ddpm/bin/ddpm | opt/ddpm/bin/ddpm-coord | opt/ddpm/bin/ddpm-worker)
            [ -f "$path" ] && [ -x "$path" ] || bad "$rel must be an executable file" ;;
        opt/ddpm/lib/*/*)
            bad "$rel: opt/ddpm/lib holds no subdirectories" ;;
        opt/ddpm/lib/*.so | opt/ddpm/lib/*.so.*)
            if [ ! -f "$path" ]; then
                bad "$rel must be a regular file"
            elif [ "$(elf_type "$path")" != DYN ]; then
                bad "$rel is not an ELF shared object"
            fi ;;
        *)
            bad "$rel is not part of the runtime layout, which holds only opt/ddpm/bin/{ddpm,ddpm-coord,ddpm-worker} and opt/ddpm/lib/*.so*" ;;
    esac
done < <(find "$out" -mindepth 1 -print0)

for b in "${binaries[@]}"; do
    [ -f "$root/bin/$b" ] || bad "opt/ddpm/bin/$b is missing"
done

# --- Dependencies -----------------------------------------------------------
shopt -s nullglob
objects=("$root"/bin/* "$root"/lib/*.so*)
declare -A in_lib=()
for f in "$root"/lib/*.so*; do in_lib[${f##*/}]=1; done

for obj in "${objects[@]}"; do
    [ -f "$obj" ] && [ ! -L "$obj" ] || continue
    rel=${obj#"$out"/}
    dir=$(dirname "$obj")
    rp=$(runpath_of "$obj")
    old=$(rpath_of "$obj")
    case $rel in
        opt/ddpm/bin/*)
            [ "$rp" = '$ORIGIN/../lib' ] || bad "$rel has RUNPATH '$rp', not \$ORIGIN/../lib (layout.sh sets it with patchelf)"
            [ -z "$old" ] || bad "$rel has a DT_RPATH ($old), which would also apply to every library it loads" ;;
    esac
    # The loader ignores DT_RPATH when there is a DT_RUNPATH.
    [ -n "$rp" ] || rp=$old
    # The directories its search path names, $ORIGIN expanded.
    dirs=()
    IFS=: read -r -a entries <<<"$rp"
    for e in "${entries[@]}"; do
        case $e in
            /*) bad "$rel has the absolute search path entry $e, a directory of the build machine" ;;
        esac
        e=${e//'${ORIGIN}'/$dir}
        e=${e//'$ORIGIN'/$dir}
        [ -n "$e" ] && dirs+=("$e")
    done
    while read -r name; do
        [ -n "$name" ] || continue
        found=""
        for d in "${dirs[@]}"; do
            if [ -f "$d/$name" ]; then
                case $(cd "$d" && pwd -P)/ in
                    "$(cd "$root" && pwd -P)"/*) found=layout ;;
                    *) found=outside:$d ;;
                esac
                break
            fi
        done
        if [ "$found" = layout ]; then
            continue
        elif [ -n "$found" ]; then
            bad "$rel needs $name, which its search path finds outside the layout (${found#outside:})"
        elif [ -n "${system[$name]:-}" ]; then
            continue
        elif [ -n "${in_lib[$name]:-}" ]; then
            bad "$rel needs $name, which is in opt/ddpm/lib but not reachable through its search path '$rp'"
        else
            bad "$rel needs $name, which is neither in the layout nor provided by debian:bookworm-slim or the NVIDIA driver (deploy/image/system-libs.txt)"
        fi
    done < <(needed_of "$obj")

    # Symbol versions it needs from the system libraries.
    while read -r ver; do
        key=${ver%%_*} num=${ver#*_}
        max=${max_version[$key]:-}
        [ -n "$max" ] || continue
        if ! version_le "$num" "$max"; then
            bad "$rel needs ${key}_$num, newer than debian:bookworm-slim's ${key}_$max"
        fi
    done < <(readelf -V --wide "$obj" 2>/dev/null | sed -n '/Version needs section/,$p' \
        | grep -oE 'Name: (GLIBC|GLIBCXX|CXXABI|GCC|ZLIB)_[0-9][0-9.]*' | sed 's/^Name: //' | sort -u)

    # Libraries it opens by name must be reachable from its own directory.
    case $rel in opt/ddpm/lib/*) ;; *) continue ;; esac
    opens=""
    while read -r name; do
        for f in "$root/lib/$name" "$root/lib/$name".[0-9]*; do
            [ -f "$f" ] && [ "${f##*/}" != "${obj##*/}" ] || continue
            opens=${f##*/}
            break 2
        done
    done < <(LC_ALL=C grep -aoE 'lib[A-Za-z0-9_+-]+(\.[A-Za-z0-9_+-]+)*\.so(\.[0-9]+)*' "$obj" | sort -u)
    if [ -n "$opens" ]; then
        case ":$rp:" in
            *':$ORIGIN:'* | *':${ORIGIN}:'*) ;;
            *) bad "$rel opens $opens by name, but its search path '$rp' lacks \$ORIGIN, so dlopen would not find it" ;;
        esac
    fi
done

# --- The Dockerfile's runtime stage ----------------------------------------
if [ -n "$dockerfile" ]; then
    if [ ! -f "$dockerfile" ]; then
        bad "$dockerfile does not exist"
    else
        # Instructions one per line: continuations joined, comments dropped.
        instructions=$(sed -e 's/^[[:space:]]*#.*$//' "$dockerfile" | awk '
            /\\[[:space:]]*$/ { sub(/\\[[:space:]]*$/, ""); buf = buf $0 " "; next }
            { line = buf $0; buf = ""; if (line ~ /[^[:space:]]/) print line }')
        stages=$(grep -ciE '^[[:space:]]*FROM[[:space:]]' <<<"$instructions")
        runtime=$(awk 'BEGIN{IGNORECASE=1} /^[[:space:]]*FROM[[:space:]]/ { n++ } n == '"$stages"' { print }' <<<"$instructions")
        build=$(awk 'BEGIN{IGNORECASE=1} /^[[:space:]]*FROM[[:space:]]/ { n++ } n < '"$stages"' { print }' <<<"$instructions")
        [ "$stages" -ge 2 ] || bad "$dockerfile: expected a build stage and a runtime stage, found $stages FROM"
        first=$(head -n1 <<<"$runtime")
        grep -qE '^[[:space:]]*FROM[[:space:]]+(docker\.io/(library/)?)?debian:bookworm-slim(@sha256:[0-9a-f]{64})?([[:space:]]|$)' <<<"$first" \
            || bad "$dockerfile: the runtime stage must start FROM debian:bookworm-slim (the base system-libs.txt describes), not: $first"

        user=$(grep -iE '^[[:space:]]*USER[[:space:]]' <<<"$runtime" | tail -n1 | awk '{print $2}')
        if [ -z "$user" ]; then
            bad "$dockerfile: the runtime stage has no USER; it would run as root"
        elif ! [[ $user =~ ^[0-9]+(:[0-9]+)?$ ]]; then
            bad "$dockerfile: USER $user must be numeric (uid:gid), so that runAsNonRoot can verify it"
        elif [ "${user%%:*}" = 0 ] || [ "${user#*:}" = 0 ]; then
            bad "$dockerfile: USER $user is root"
        fi

        # ENV KEY=VALUE pairs of the runtime stage (the ENV KEY VALUE form too).
        envs=$(grep -iE '^[[:space:]]*ENV[[:space:]]' <<<"$runtime" | sed -E 's/^[[:space:]]*ENV[[:space:]]+//I' | awk '
            $1 !~ /=/ { k = $1; $1 = ""; sub(/^ +/, ""); print k "=" $0; next }
            { for (i = 1; i <= NF; i++) print $i }' | tr -d '"')
        envval() { grep -E "^$1=" <<<"$envs" | tail -n1 | cut -d= -f2-; }
        [ "$(envval NVIDIA_VISIBLE_DEVICES)" = all ] \
            || bad "$dockerfile: the runtime stage must set ENV NVIDIA_VISIBLE_DEVICES=all (got '$(envval NVIDIA_VISIBLE_DEVICES)')"
        caps=$(envval NVIDIA_DRIVER_CAPABILITIES)
        for c in compute utility; do
            [[ ",$caps," == *",$c,"* ]] || bad "$dockerfile: NVIDIA_DRIVER_CAPABILITIES must include $c (got '$caps')"
        done
        for v in HOME TMPDIR; do
            [ "$(envval $v)" = /tmp ] || bad "$dockerfile: ENV $v must be /tmp, the one writable place under a read-only root filesystem (got '$(envval $v)')"
        done
        [[ ":$(envval PATH):" == *":/opt/ddpm/bin:"* ]] || bad "$dockerfile: ENV PATH must include /opt/ddpm/bin"
        [ -z "$(envval LD_LIBRARY_PATH)" ] || bad "$dockerfile: the runtime stage sets LD_LIBRARY_PATH; the binaries find /opt/ddpm/lib through RUNPATH"

        # The layout is copied whole, and nothing else: the directory the
        # build stage gave layout.sh as OUT_DIR, onto /.
        layout_out=$(grep -oE 'layout\.sh[[:space:]]+[^[:space:]]+' <<<"$build" | awk '{print $2}' | tail -n1)
        [ -n "$layout_out" ] || bad "$dockerfile: the build stage does not run deploy/image/layout.sh"
        grep -qE 'check\.sh' <<<"$build" || bad "$dockerfile: the build stage does not run deploy/image/check.sh on the layout"
        copies=$(grep -iE '^[[:space:]]*(COPY|ADD)[[:space:]]' <<<"$runtime")
        ncopies=$(grep -c . <<<"$copies")
        if [ "$ncopies" != 1 ]; then
            bad "$dockerfile: the runtime stage must have exactly one COPY (the layout), found $ncopies: $(tr '\n' ';' <<<"$copies")"
        elif ! grep -qE "^[[:space:]]*COPY[[:space:]]+--from=[A-Za-z0-9_-]+[[:space:]]+${layout_out%/}/?[[:space:]]+/[[:space:]]*$" <<<"$copies"; then
            bad "$dockerfile: the runtime stage's COPY must be 'COPY --from=<build> ${layout_out%/}/ /', not: $copies"
        fi
        if grep -iE '^[[:space:]]*RUN[[:space:]]' <<<"$runtime" | grep -qiE 'python|pip'; then
            bad "$dockerfile: the runtime stage installs Python; the binaries do not need it"
        fi
    fi
fi

if [ $problems -gt 0 ]; then
    echo "check.sh: $problems problem(s) in $out${dockerfile:+ and $dockerfile}" >&2
    exit 1
fi
nlib=$(find "$root/lib" -name '*.so*' | wc -l)
msg="check.sh: $out is a valid runtime layout (3 binaries, $nlib libraries, $(du -sh "$root" | cut -f1))"
[ -z "$dockerfile" ] || msg+="; the runtime stage of $dockerfile ships it as required"
echo "$msg"
