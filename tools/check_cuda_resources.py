#!/usr/bin/env python3
"""Reads the register/stack/local-memory usage of every CUDA kernel in the built extension and
fails on register spills or on registers above what a kernel's __launch_bounds__ allow.

    .venv/bin/python tools/check_cuda_resources.py [LIBRARY_OR_OBJECT ...] [--json OUT] [--ptxas-log LOG]

Without paths it checks regnet_ext/_C*.so and build/cuda-lib/regnet_ext/_C*.so. It needs
`cuobjdump` (CUDA toolkit, the pip package nvidia-cuda-cuobjdump, or the copy bundled with
triton); with --ptxas-log it parses a build log made with `-Xptxas -v` instead.

Rules, per kernel and architecture:
  * LOCAL must be 0: local memory is where ptxas puts spilled registers (and local arrays, which
    our kernels do not use), so any local memory fails the check.
  * the kernel must declare __launch_bounds__ (names matching --allow-unbounded are exempt: the
    compile-check kernels that instantiate header math and are never launched);
  * REG must not exceed the launch bounds' budget: ptxas's cap (EIATTR_MAXREG_COUNT, set from
    maxThreads/minBlocks) and 65536 / maxThreads.
"""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REGISTER_FILE = 65536  # 32-bit registers per SM on every architecture we build for
MAX_REGISTERS = 255
DEFAULT_ALLOW_UNBOUNDED = r"compile_check"


def find_cuobjdump():
    """cuobjdump from PATH, the toolkit, the pip package, or triton's bundled copy."""
    candidates = [shutil.which("cuobjdump")]
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            candidates.append(os.path.join(home, "bin", "cuobjdump"))
    for entry in sys.path:
        candidates += glob.glob(os.path.join(entry, "nvidia", "*", "bin", "cuobjdump"))
        candidates.append(os.path.join(entry, "triton", "backends", "nvidia", "bin", "cuobjdump"))
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def demangle(names):
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def parse_resource_usage(text):
    """{(arch, mangled): {reg, stack, shared, local}} from `cuobjdump --dump-resource-usage`."""
    usage, arch = {}, None
    function = None
    for line in text.splitlines():
        m = re.match(r"\s*arch = (\S+)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\s*Function (\S+):\s*$", line)
        if m:
            function = m.group(1)
            continue
        if function and "REG:" in line:
            fields = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line))
            usage[(arch, function)] = {k: int(fields.get(k.upper(), 0)) for k in ("reg", "stack", "shared", "local")}
            function = None
    return usage


def parse_launch_bounds(text):
    """{(arch, mangled): {max_threads, maxreg}} from the .nv.info sections of `cuobjdump -elf`."""
    bounds, arch, function, attribute = {}, None, None, None
    for line in text.splitlines():
        m = re.match(r"\s*arch = (\S+)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"^\.nv\.info\.(\S+)\s*$", line)
        if m:
            function = m.group(1)
            bounds.setdefault((arch, function), {})
            continue
        m = re.match(r"\s*Attribute:\s*(\S+)", line)
        if m:
            attribute = m.group(1)
            continue
        m = re.match(r"\s*Value:\s*(.+)$", line)
        if m and function and attribute in ("EIATTR_MAX_THREADS", "EIATTR_MAXREG_COUNT"):
            values = [int(v, 16) for v in m.group(1).split()]
            if attribute == "EIATTR_MAX_THREADS":
                bounds[(arch, function)]["max_threads"] = values[0] * values[1] * values[2]
            else:
                bounds[(arch, function)]["maxreg"] = values[0]
        elif re.match(r"^\S", line):
            attribute = None
    return bounds


def parse_ptxas_log(text):
    """(usage, bounds) from a build log with `-Xptxas -v` (no launch-bound caps in it)."""
    usage, function, arch = {}, None, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for '(\S+)'", line)
        if m:
            function, arch = m.group(1), m.group(2)
            usage[(arch, function)] = {"reg": 0, "stack": 0, "shared": 0, "local": 0}
            continue
        if function is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            usage[(arch, function)]["stack"] = int(m.group(1))
            usage[(arch, function)]["local"] = int(m.group(2)) + int(m.group(3))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            usage[(arch, function)]["reg"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            usage[(arch, function)]["shared"] = int(s.group(1)) if s else 0
    return usage, {}


def register_budget(bound):
    if not bound or "max_threads" not in bound:
        return None
    budget = min(MAX_REGISTERS, REGISTER_FILE // bound["max_threads"])
    if bound.get("maxreg"):
        budget = min(budget, bound["maxreg"])
    return budget


def check(usage, bounds, allow_unbounded, have_bounds_info=True):
    """Rows (one per kernel and arch) with a 'problems' list each."""
    names = demangle(sorted({f for _, f in usage}))
    rows = []
    for (arch, function), u in sorted(usage.items(), key=lambda kv: (names[kv[0][1]], kv[0][0] or "")):
        bound = bounds.get((arch, function))
        budget = register_budget(bound)
        problems = []
        if u["local"] > 0:
            problems.append(f"{u['local']} bytes of local memory (register spills)")
        if have_bounds_info:
            if budget is None:
                if not re.search(allow_unbounded, names[function]):
                    problems.append("no __launch_bounds__")
            elif u["reg"] > budget:
                problems.append(f"{u['reg']} registers > {budget} allowed by its launch bounds")
        rows.append({"arch": arch, "kernel": names[function], "mangled": function, **u,
                     "max_threads": (bound or {}).get("max_threads"), "register_budget": budget,
                     "problems": problems})
    return rows


def default_paths():
    found = glob.glob(str(ROOT / "build" / "cuda-lib" / "regnet_ext" / "_C*.so"))
    found += glob.glob(str(ROOT / "regnet_ext" / "_C*.so"))
    return found


def short(name, width=78):
    name = re.sub(r"regnet_ext::cuda::(\(anonymous namespace\)::)?", "", name)
    name = re.sub(r"\(.*\)$", "", name)
    return name if len(name) <= width else name[: width - 3] + "..."


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="built extension (.so) or object files")
    parser.add_argument("--ptxas-log", help="parse this `-Xptxas -v` build log instead of running cuobjdump")
    parser.add_argument("--json", help="also write the table as JSON here")
    parser.add_argument("--allow-unbounded", default=DEFAULT_ALLOW_UNBOUNDED,
                        help="regex of kernels exempt from needing __launch_bounds__ (default: %(default)s)")
    args = parser.parse_args(argv)

    if args.ptxas_log:
        usage, bounds = parse_ptxas_log(Path(args.ptxas_log).read_text())
        rows = check(usage, bounds, args.allow_unbounded, have_bounds_info=False)
    else:
        paths = args.paths or default_paths()
        if not paths:
            print("check_cuda_resources: no CUDA build found; pass the .so (build with REGNET_EXT_CUDA=1)",
                  file=sys.stderr)
            return 2
        tool = find_cuobjdump()
        if tool is None:
            print("check_cuda_resources: cuobjdump not found (pip install nvidia-cuda-cuobjdump)", file=sys.stderr)
            return 2
        usage, bounds = {}, {}
        for path in paths:
            usage.update(parse_resource_usage(subprocess.run([tool, "--dump-resource-usage", path], check=True,
                                                             capture_output=True, text=True).stdout))
            bounds.update(parse_launch_bounds(subprocess.run([tool, "-elf", path], check=True, capture_output=True,
                                                             text=True).stdout))
        rows = check(usage, bounds, args.allow_unbounded)
    if not rows:
        print("check_cuda_resources: no CUDA kernels found", file=sys.stderr)
        return 2

    print(f"{'kernel':78s} {'arch':7s} {'reg':>4s} {'budget':>6s} {'threads':>7s} {'smem':>6s} {'stack':>5s} "
          f"{'local':>5s}  status")
    for r in rows:
        status = "FAIL: " + "; ".join(r["problems"]) if r["problems"] else "ok"
        print(f"{short(r['kernel']):78s} {r['arch'] or '?':7s} {r['reg']:4d} {str(r['register_budget'] or '-'):>6s} "
              f"{str(r['max_threads'] or '-'):>7s} {r['shared']:6d} {r['stack']:5d} {r['local']:5d}  {status}")
    failures = [r for r in rows if r["problems"]]
    print(f"\n{len(rows)} kernel builds checked, {len(failures)} failing")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
