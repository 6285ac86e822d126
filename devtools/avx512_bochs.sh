#!/usr/bin/env bash
# Run tests on an emulated AVX-512 CPU, for machines whose CPU (or hypervisor) has none:
# there the AVX-512 micro-kernels are compiled but never run, and tests/test_simd.py skips
# them. Bochs 2.7 (Debian's build has AVX-512) emulates a Skylake-X; a Linux kernel boots
# it with an initramfs holding exactly the files the same pytest run opens natively
# (traced with strace), and /init runs that pytest and reports its exit status. In the
# guest AVX-512 is the best variant, so every test runs on it unless it forces another.
#
#   devtools/avx512_bochs.sh [pytest arguments]
#
# Default arguments: the tests that force each SIMD variant, minus the baseline and AVX2
# ones the host already runs. Run from the source tree with the extension built in place
# (`python setup.py build_ext --inplace`) and the development environment's python first
# on PATH (or in $PYTHON). PyTorch, Keras, dask, zarr and the other peers are left out of
# the guest (their tests skip). Needs root for apt-get; about 40 minutes for the default
# set (the emulator runs some 200 times slower than the host; $TIMEOUT seconds at most,
# 7200 by default). Exit status: the guest pytest's (1 if it did not finish).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="$(command -v "${PYTHON:-python}")"
WORK="${WORK:-$(mktemp -d)}"
if [ "$#" -eq 0 ]; then
    set -- tests/test_simd.py tests/test_groups.py tests/test_layout_bits.py \
        tests/test_layouts.py -k "not baseline and not avx2"
fi

need=()
for cmd in bochs grub-mkrescue xorriso mformat cpio strace; do
    command -v "$cmd" > /dev/null || need+=("$cmd")
done
if [ "${#need[@]}" -gt 0 ] || [ ! -e /usr/share/bochs/BIOS-bochs-latest ]; then
    apt-get install -y -q bochs bochsbios vgabios grub-pc-bin grub-common xorriso mtools \
        cpio strace > "$WORK/apt.log"
fi

# Linux 5.10 (Debian bullseye): 6.1 checks the XSAVE area's size against CPUID, finds
# Bochs 2.7's off, and turns XSAVE (hence AVX) off.
if [ ! -e "$WORK/vmlinuz" ]; then
    mkdir -p "$WORK/apt/lists/partial" "$WORK/kernel"
    echo "deb http://deb.debian.org/debian bullseye main" > "$WORK/apt/sources.list"
    apt_opts=(-o "Dir::Etc::sourcelist=$WORK/apt/sources.list" -o "Dir::Etc::sourceparts=-"
              -o "Dir::State::Lists=$WORK/apt/lists" -o "Dir::Cache::archives=$WORK/apt")
    apt-get "${apt_opts[@]}" update -q > "$WORK/apt.log"
    (cd "$WORK/apt" && apt-get "${apt_opts[@]}" download -q \
        "$(apt-cache "${apt_opts[@]}" search '^linux-image-5\.10\.0-[0-9]+-cloud-amd64$' \
           | sort -V | tail -1 | cut -d' ' -f1)" >> "$WORK/apt.log" 2>&1)
    dpkg-deb -x "$WORK"/apt/linux-image-*.deb "$WORK/kernel"
    cp "$WORK"/kernel/boot/vmlinuz-* "$WORK/vmlinuz"
fi

# The guest's command: pytest in the source tree, with the peers missing.
cat > "$WORK/guest.py" <<EOF
import os, sys
PEERS = {"torch", "keras", "tensorflow", "jax", "dask", "distributed", "zarr", "numcodecs",
         "nibabel", "matplotlib", "pandas", "ml_dtypes"}
class LeftOut:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in PEERS:
            raise ModuleNotFoundError(f"No module named {name!r} (left out)", name=name)
sys.meta_path.insert(0, LeftOut())
os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"   # the peers' plugins
os.environ["OMP_NUM_THREADS"] = "1"
os.chdir("$REPO")
import pytest
sys.exit(pytest.main(["-p", "no:cacheprovider", "-q", "-rfE", *sys.argv[1:]]))
EOF

# The root file system: every file the same run opens on the host.
strace -f -qq -e trace=openat,execve,stat,newfstatat,readlink,access -o "$WORK/trace" \
    "$PYTHON" "$WORK/guest.py" "$@" > "$WORK/host_run.log" 2>&1 || true
rm -rf "$WORK/rootfs"
"$PYTHON" - "$WORK" "$REPO" <<'EOF'
import os, re, shutil, sys
work, repo = sys.argv[1:]
root = os.path.join(work, "rootfs")
paths = {"/lib64/ld-linux-x86-64.so.2", os.path.join(work, "guest.py")}
for line in open(os.path.join(work, "trace")):
    m = re.search(r'\w+\((?:AT_FDCWD, )?"([^"]+)"', line)
    if m and " = -1 " not in line:
        paths.add(os.path.normpath(os.path.join(repo, m.group(1))))
for top in ("tests", "tconv3d"):
    for d, dirs, files in os.walk(os.path.join(repo, top)):
        dirs[:] = [x for x in dirs if x != "__pycache__"]
        paths.update(os.path.join(d, f) for f in files if not f.endswith(".c"))
for p in paths:
    if p.startswith(("/proc", "/sys", "/dev")) or not os.path.isfile(p):
        continue
    os.makedirs(os.path.dirname(root + p), exist_ok=True)
    shutil.copy2(os.path.realpath(p), root + p)   # symlinks as files at their own paths
EOF

cat > "$WORK/init.c" <<'EOF'
/* The guest's /init: pseudo file systems, the command in /guest_args (an argument per
 * line), its exit status on the console, power off. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
int main(void)
{
    mkdir("/proc", 0755); mkdir("/sys", 0755); mkdir("/dev", 0755); mkdir("/tmp", 01777);
    mount("proc", "/proc", "proc", 0, 0); mount("sysfs", "/sys", "sysfs", 0, 0);
    mount("devtmpfs", "/dev", "devtmpfs", 0, 0);
    freopen("/dev/console", "w", stdout); freopen("/dev/console", "w", stderr);
    setvbuf(stdout, 0, _IONBF, 0);
    char *args[256], line[4096]; int n = 0; FILE *f = fopen("/guest_args", "r");
    while (f && n < 255 && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0; args[n++] = strdup(line);
    }
    args[n] = 0;
    char *env[] = {"PATH=/usr/bin:/bin", "HOME=/root", "LANG=C.UTF-8", "PYTHONUNBUFFERED=1", 0};
    __builtin_cpu_init();
    printf("GUEST START avx512f=%d\n", !!__builtin_cpu_supports("avx512f"));
    pid_t pid = fork();
    if (pid == 0) { execve(args[0], args, env); perror("execve"); _exit(127); }
    int status = 0; waitpid(pid, &status, 0);
    printf("\nGUEST EXIT status=%d\n", WIFEXITED(status) ? WEXITSTATUS(status) : 128);
    sync(); sleep(5); reboot(RB_POWER_OFF); return 0;
}
EOF
gcc -O2 -static -o "$WORK/rootfs/init" "$WORK/init.c"
printf '%s\n' "$PYTHON" "$WORK/guest.py" "$@" > "$WORK/rootfs/guest_args"
mkdir -p "$WORK/iso/boot/grub"
(cd "$WORK/rootfs" && find . | cpio -o -H newc 2> /dev/null | gzip -1) > "$WORK/iso/boot/initrd.gz"
cp "$WORK/vmlinuz" "$WORK/iso/boot/vmlinuz"
cat > "$WORK/iso/boot/grub/grub.cfg" <<'EOF'
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
menuentry "tests" {
  linux /boot/vmlinuz console=ttyS0,115200 loglevel=4 rdinit=/init nokaslr nopku noxsaves mitigations=off tsc=reliable lpj=1000000
  initrd /boot/initrd.gz
}
EOF
grub-mkrescue -o "$WORK/boot.iso" "$WORK/iso" > "$WORK/grub.log" 2>&1

cat > "$WORK/bochsrc" <<EOF
megs: 2048
cpu: model=corei7_skylake_x, count=1, ips=200000000
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/bochs/VGABIOS-lgpl-latest
ata0-master: type=cdrom, path=$WORK/boot.iso, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev=$WORK/console.txt
display_library: rfb, options="timeout=0"
log: $WORK/bochs.log
panic: action=fatal
info: action=ignore
clock: sync=none
EOF
echo "emulating (console: $WORK/console.txt)"
# Debian's bochs starts in its debugger: 'c' continues.
printf 'c\n' | timeout "${TIMEOUT:-7200}" bochs -q -f "$WORK/bochsrc" > "$WORK/bochs.out" 2>&1 \
    || true
sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$WORK/console.txt" | sed -n '/GUEST START/,$p'
status="$(sed -n 's/.*GUEST EXIT status=\([0-9]*\).*/\1/p' "$WORK/console.txt")"
exit "${status:-1}"
