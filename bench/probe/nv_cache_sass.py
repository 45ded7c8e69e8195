"""The GPU programs NVIDIA's Vulkan driver compiled from our WGSL (through Dawn's SPIR-V), as SASS,
with each one's register count: what decides how many workgroups share an SM (65,536 registers
an SM: a workgroup of 256 threads fits twice at <= 128 registers a thread, once above).

The driver keeps what it compiles in its shader disk cache ($__GL_SHADER_DISK_CACHE_PATH/GLCache/
.../*.bin): zstd frames, each a program in NVIDIA's "cuVN" container that nvdisasm reads as it is
(`nvdisasm -b SM90`). On the GPU machine (CUDA's nvdisasm is in /usr/local/cuda-13.0/bin; it has no
zstd, so carry one: `mkdir -p .gpu/extra && cp /usr/bin/zstd /lib/x86_64-linux-gnu/liblz4.so.1 .gpu/extra/`):
  C=/tmp/nvcache-$RANDOM; mkdir -p $C; export __GL_SHADER_DISK_CACHE_PATH=$C
  bash .gpu/boot.sh node bench/dist/streamk-variants.mjs      # or any bench
  python3 bench/probe/nv_cache_sass.py $C $OUT/sass            # a line per program; SASS in $OUT/sass
A program that binds a 7th buffer (c[0x0][0x90], the partial sums) is a stream-K kernel ("streamK").
"""
import glob, os, re, shutil, subprocess, sys

NVDISASM = next((p for p in ['/usr/local/cuda-13.0/bin/nvdisasm', '/usr/local/cuda/bin/nvdisasm', shutil.which('nvdisasm')] if p and os.path.exists(p)), None)
EXTRA = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', '.gpu', 'extra')
ZSTD = shutil.which('zstd') or os.path.join(EXTRA, 'zstd')
MAGIC = bytes.fromhex('28b52ffd')  # a zstd frame


def unzstd(frame: bytes) -> bytes:
    env = {**os.environ, 'LD_LIBRARY_PATH': EXTRA}
    return subprocess.run([ZSTD, '-d', '-c', '-q'], input=frame, capture_output=True, env=env).stdout


def main() -> None:
    src, out = sys.argv[1], sys.argv[2]
    if not NVDISASM: sys.exit('no nvdisasm (CUDA) here')
    if not os.path.exists(ZSTD): sys.exit(f'no zstd: carry one in {EXTRA}')
    os.makedirs(out, exist_ok=True)
    n = 0
    for path in sorted(glob.glob(os.path.join(src, '**', '*.bin'), recursive=True)):
        blob = open(path, 'rb').read()
        starts = [m.start() for m in re.finditer(re.escape(MAGIC), blob)] + [len(blob)]
        for begin, end in zip(starts, starts[1:]):
            raw = unzstd(blob[begin:end])  # (zstd reads its frame and ignores what follows)
            if len(raw) < 2000: continue  # the cache's own records
            code = os.path.join(out, f'p{n:02d}.bin')
            open(code, 'wb').write(raw[8:])
            sass = subprocess.run([NVDISASM, '-b', 'SM90', code], capture_output=True, text=True).stdout
            open(os.path.join(out, f'p{n:02d}.sass'), 'w').write(sass)
            os.remove(code)
            lines = sass.splitlines()
            count = lambda op: sum(1 for l in lines if re.search(r'\*/\s+(@!?U?P\w+\s+)?' + op, l))
            regs = re.search(r'Register count=(\d+)', sass)
            fields = {op: count(pattern) for op, pattern in [('FFMA', 'FFMA'), ('LDS.128', r'LDS\.128'), ('STS', r'STS\s'), ('STS.128', r'STS\.128'), ('LDG', 'LDG')]}
            fields['instructions'] = sum(1 for l in lines if re.match(r'\s+/\*[0-9a-f]{4,}\*/', l))
            kind = ' streamK' if 'c[0x0][0x90]' in sass else ''
            print(f'p{n:02d} regs {regs.group(1) if regs else "?"}{kind} ' + ' '.join(f'{k} {v}' for k, v in fields.items()))
            n += 1
    print(f'{n} programs')


if __name__ == '__main__':
    main()
