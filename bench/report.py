"""Writing benchmark results: one JSON file and one Markdown table per benchmark, plus the machine."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path


def machine() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    """The CPU's (or GPU's) measured fp32 matmul rate: the ceiling for model FLOPs utilisation."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def write(
    out_dir: str | Path, name: str, result: dict, table: list[dict], title: str, command: str
) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "command": command, "machine": machine(), **result, "rows": table}
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(result, indent=2))
    cols = list(table[0]) if table else []
    lines = [f"### {title}", "", f"`{command}`", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table:
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    m = result["machine"]
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}"
        + (f", {m['cuda']}" if m["cuda"] else ""),
    ]
    md_path = out / f"{name}.md"
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)
