#!/bin/sh
# test/install_consumer.sh BUILD_ROOT CONSUMER_CPP [PYTHON]
#
# Installs the build into a staging DESTDIR, checks that the headers, the
# shared and static libraries and ringckpt.pc are there, then builds
# CONSUMER_CPP the way a user would (c++ app.cpp $(pkg-config --cflags --libs
# ringckpt)) against the staged tree, once against the shared library and
# once against the static one (pkg-config --static), runs both and checks
# what they print. Given PYTHON, also imports the installed Python package
# from the staged site directory with it and round-trips a state dict.
set -u

me=install_consumer
fail() {
  echo "$me: FAIL: $*" >&2
  exit 1
}

[ $# -eq 2 ] || [ $# -eq 3 ] || fail "usage: $0 BUILD_ROOT CONSUMER_CPP [PYTHON]"
build=$1
src=$2
python=${3:-}
[ -d "$build" ] || fail "build root $build is not a directory"
[ -f "$src" ] || fail "consumer source $src not found"
srcroot=$(cd "$(dirname "$src")/.." && pwd) || fail "cannot find the source root"
expected='consumer ok: 3 entries round-tripped'
cxx=c++
# A sanitizer build installs an instrumented library that a plain consumer
# cannot link: nothing to check there (77: meson's "skipped").
if grep -q -e '-fsanitize=' "$build/build.ninja" 2>/dev/null; then
  echo "$me: SKIP: $build is a sanitizer build"
  exit 77
fi
command -v pkg-config >/dev/null 2>&1 || fail "pkg-config not found"
command -v $cxx >/dev/null 2>&1 || fail "$cxx not found"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ringckpt-install.XXXXXX") || fail "mktemp failed"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
stage=$tmp/root
mkdir "$stage" || fail "mkdir $stage"

# 1. Install.
if ! meson install -C "$build" --no-rebuild --quiet --destdir "$stage" >"$tmp/install.log" 2>&1; then
  cat "$tmp/install.log" >&2
  fail "meson install into $stage failed (are all install targets built? --no-rebuild builds nothing)"
fi

# 2. What must be there.
pc=$(find "$stage" -name ringckpt.pc -type f | head -n 1)
[ -n "$pc" ] || fail "ringckpt.pc was not installed"
shared=$(find "$stage" -name 'libringckpt.so*' -type f | head -n 1)
[ -n "$shared" ] || fail "the shared library libringckpt.so was not installed"
libdir=$(dirname "$shared")
[ -e "$libdir/libringckpt.so" ] || fail "libringckpt.so (the link-time name) missing in $libdir"
static=$(find "$stage" -name libringckpt.a -type f | head -n 1)
[ -n "$static" ] || fail "the static library libringckpt.a was not installed"
incdir=$(find "$stage" -type d -path '*/include/ringckpt' | head -n 1)
[ -n "$incdir" ] || fail "the headers (include/ringckpt/) were not installed"
# Every public header; mpi.hpp only where the library was built with MPI.
with_mpi=no
grep -q '^Requires.*mpi' "$pc" && with_mpi=yes
for h in "$srcroot"/include/ringckpt/*.hpp; do
  name=$(basename "$h")
  [ "$name" = mpi.hpp ] && [ "$with_mpi" = no ] && continue
  [ -f "$incdir/$name" ] || fail "header $name was not installed in $incdir"
done
echo "$me: installed $(basename "$pc"), $(basename "$shared"), $(basename "$static"), headers in ${incdir#"$stage"}"

# The .pc must name libraries with -l, never by a path on the build machine:
# such a path breaks DESTDIR and sysroot use, and makes a --static link take
# the shared library.
bad=$(grep -E '^Libs(\.private)?:' "$pc" | tr ' ' '\n' | grep -E '^/.*\.(so|a)(\.[0-9.]*)?$' | tr '\n' ' ')
[ -z "$bad" ] || fail "ringckpt.pc names libraries by absolute path: ${bad% } (use -l<name>)"

# Relocate a copy of the staged .pc to the staging tree. (PKG_CONFIG_SYSROOT_DIR
# or --define-variable=prefix would also move the paths of the system's own
# dependencies -- Boost, Open MPI -- into the staging tree, where they are not.)
prefix=$(sed -n 's/^prefix=//p' "$pc")
[ -n "$prefix" ] || fail "ringckpt.pc defines no prefix"
mkdir "$tmp/pc" || fail "mkdir $tmp/pc"
sed "s|^prefix=.*|prefix=$stage$prefix|" "$pc" >"$tmp/pc/ringckpt.pc" || fail "cannot copy $pc"
pcenv() {
  PKG_CONFIG_PATH="$tmp/pc${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}" pkg-config "$@"
}
case $(pcenv --cflags ringckpt) in
  *"-I$stage"*) ;;
  *) fail "pkg-config --cflags ringckpt does not point into the staged tree: $(pcenv --cflags ringckpt)" ;;
esac

# 3. Shared: exactly what a user types.
flags=$(pcenv --cflags --libs ringckpt) || fail "pkg-config --cflags --libs ringckpt failed"
echo "$me: pkg-config --cflags --libs ringckpt: $flags"
# shellcheck disable=SC2086  # word splitting of the flags is wanted
if ! $cxx -std=c++20 "$src" $flags -o "$tmp/consumer" 2>"$tmp/cc.log"; then
  cat "$tmp/cc.log" >&2
  fail "building the consumer with the pkg-config flags failed"
fi
out=$(LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$tmp/consumer" 2>&1)
rc=$?
[ $rc -eq 0 ] || fail "the consumer (shared) exited $rc: $out"
echo "$out" | grep -qxF "$expected" || fail "the consumer (shared) printed '$out', expected '$expected'"
if command -v ldd >/dev/null 2>&1; then
  LD_LIBRARY_PATH="$libdir" ldd "$tmp/consumer" | grep -q "$libdir/libringckpt\.so" ||
    fail "the consumer did not load the staged libringckpt.so"
fi
echo "$me: shared: $out"

# 4. Static: pkg-config --static must name every library libringckpt.a needs.
sflags=$(pcenv --static --cflags --libs ringckpt) || fail "pkg-config --static --cflags --libs ringckpt failed"
echo "$me: pkg-config --static --cflags --libs ringckpt: $sflags"
rest=
for f in $sflags; do
  [ "$f" = "-lringckpt" ] || rest="$rest $f"
done
# shellcheck disable=SC2086
if ! $cxx -std=c++20 "$src" "$static" $rest -o "$tmp/consumer-static" 2>"$tmp/cc-static.log"; then
  cat "$tmp/cc-static.log" >&2
  fail "linking the consumer against libringckpt.a with 'pkg-config --static --libs' failed: the .pc lacks libraries the static library needs"
fi
out=$("$tmp/consumer-static" 2>&1)
rc=$?
[ $rc -eq 0 ] || fail "the consumer (static) exited $rc: $out"
echo "$out" | grep -qxF "$expected" || fail "the consumer (static) printed '$out', expected '$expected'"
echo "$me: static: $out"

# 5. The Python package, where the build has one: installed into the site
# directory with its extension, and importable from there alone.
if [ -n "$python" ]; then
  core=$(find "$stage" -path '*/ringckpt/_core*.so' -type f | head -n 1)
  [ -n "$core" ] || fail "the Python extension ringckpt/_core*.so was not installed"
  site=$(dirname "$(dirname "$core")")
  for py in "$srcroot"/python/ringckpt/*.py; do
    [ -f "$site/ringckpt/$(basename "$py")" ] || fail "python/ringckpt/$(basename "$py") was not installed in ${site#"$stage"}/ringckpt"
  done
  out=$(cd "$tmp" && PYTHONPATH="$site" "$python" -c '
import sys, torch, ringckpt
assert ringckpt.__file__.startswith(sys.argv[1]), ringckpt.__file__
state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "step": 7}
ringckpt.save(state, sys.argv[2])
back = ringckpt.load_state_dict(sys.argv[2])
assert torch.equal(back["model"]["w"], state["model"]["w"]) and back["step"] == 7
print("python ok")' "$site" "$tmp/py-ckpt" 2>&1)
  rc=$?
  [ $rc -eq 0 ] && [ "$out" = "python ok" ] || fail "the installed Python package failed ($rc): $out"
  echo "$me: python: installed in ${site#"$stage"}, imported from there, round trip ok"
fi
echo "$me: ok"
