#!/usr/bin/env bash
# What bench/gpu.sh needs on a GPU machine that has no Deno, no npm packages, no Vulkan loader and
# no network, made here as files to carry along with the checkout:
#   .tools/deno.xz      this machine's Deno binary, xz-compressed (~30 MB)
#   .tools/npm.tar.xz   the npm packages the project imports (a DENO_DIR's npm/ folder, ~3 MB)
#   .gl/*.deb           the Vulkan loader (libvulkan1), unpacked there by bench/gpu.sh
# The two folders are added to .git/info/exclude. Then, on the GPU machine, from the checkout
# with .tools and .gl beside it: `bench/gpu.sh` (it finds them there). Needs xz, tar and, for the
# loader, apt-get (Debian/Ubuntu); run it again after changing the imports or Deno.
#
#   bench/gpu_carry.sh
set -euo pipefail
cd "$(dirname "$0")/.."
deno="${DENO:-$(command -v deno || true)}"
if [ -z "$deno" ]; then
  echo "bench/gpu_carry.sh: no deno on the PATH (or set DENO)" >&2
  exit 1
fi
mkdir -p .tools .gl
for d in /.tools/ /.gl/; do
  grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >>.git/info/exclude
done

bin="$(readlink -f "$(command -v "$deno")")"
echo "deno: $("$bin" --version | head -1) from $bin"
xz -T0 -6 -c "$bin" >.tools/deno.xz.tmp
mv .tools/deno.xz.tmp .tools/deno.xz

cache="$(mktemp -d)"
trap 'rm -rf "$cache"' EXIT
DENO_DIR="$cache" "$deno" cache --quiet cli.ts bench/main.ts bench/gpu_jobs.ts bench/gpu_summary.ts \
  bench/shaped_checkpoint.ts
tar -C "$cache" -cf - npm | xz -T0 -6 >.tools/npm.tar.xz.tmp
mv .tools/npm.tar.xz.tmp .tools/npm.tar.xz

# The loader for x86-64 whatever this machine is (the device README's recipe, Vulkan only).
lists="$(mktemp -d)"
o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$lists")
mkdir -p "$lists/partial"
apt-get "${o[@]}" update -qq
rm -f .gl/libvulkan1_*.deb
(cd .gl && apt-get "${o[@]}" download -qq libvulkan1)
rm -rf "$lists"

du -ch .tools/* .gl/* | sed 's/^/  /'
echo "carry .tools and .gl with the checkout; there, run bench/gpu.sh"
