"""What a run's figures mean, and how they are shown.

Derived figures (the best peer, speedups, the share of the memcpy ceiling,
the targets met or missed) are computed from the medians in the results
dict, so a ``--json`` file from an earlier run renders as this version
reads it. Then the table, Markdown and the chart.
"""

from . import cases as cases_mod
from .targets import TARGETS

__all__ = ["format_table", "format_markdown", "plot"]


def _dedupe(reason):
    """The registry joins the reasons of a backend's modules; say each once."""
    if not reason:
        return reason
    parts = []
    for part in str(reason).split("; "):
        if part not in parts:
            parts.append(part)
    return "; ".join(parts)



# --- derived figures: ratios, ceiling, targets ---------------------------------------

def _errors(results):
    return [(case["name"], c["name"], c.get("error"))
            for case in results["cases"] for c in case["contenders"]
            if c["status"] == "error"]


def _speedup(case, mpx_value, peer_value):
    if not mpx_value or not peer_value:
        return None
    return mpx_value / peer_value if case["higher_is_better"] else peer_value / mpx_value


def _ceiling(results, name="memcpy"):
    for case in results["cases"]:
        if case["name"] == name:
            for c in case["contenders"]:
                if c["status"] == "ok":
                    return c["median"]
    return None


def _derive(results):
    """Best peer and speedup per mpx contender, share of the memcpy
    ceiling, and the targets, from the medians of this run."""
    ceiling = _ceiling(results)
    results["memcpy_GBps"] = ceiling
    results["memcpy_1MiB_GBps"] = _ceiling(results, "memcpy-1MiB")
    for case in results["cases"]:
        peers = [c for c in case["contenders"] if c["side"] == "peer" and c["status"] == "ok"]
        best = None
        if peers:
            pick = max if case["higher_is_better"] else min
            best = pick(peers, key=lambda c: c["median"])
        case["best_peer"] = best["name"] if best else None
        # The stdlib object the case would use without mpx (mp.Queue, mp.Pipe, ...).
        stdlib = next((p for p in peers if p["name"].startswith("mp.")), None)
        case["stdlib_peer"] = stdlib["name"] if stdlib else None
        for c in case["contenders"]:
            if c["side"] != "mpx" or c["status"] != "ok":
                continue
            c["speedup"] = {p["name"]: _speedup(case, c["median"], p["median"]) for p in peers}
            c["speedup_best"] = c["speedup"].get(case["best_peer"])
            c["speedup_stdlib"] = c["speedup"].get(case["stdlib_peer"])
            if case["unit"] == "GB/s" and ceiling:
                c["of_memcpy"] = c["median"] / ceiling
    results["targets"] = _evaluate_targets(results)
    if results["mode"] == "smoke":
        # Tiny counts say nothing about speed: no target is judged on them.
        for t in results["targets"]:
            if t["state"] in ("met", "MISSED"):
                t["state"] = "not measured"
                t["note"] = "smoke run: figures from tiny counts are not judged"
                t.pop("value", None)


def _match(name, pattern):
    """Glob match where only '*' is special (names contain brackets)."""
    import fnmatch
    return fnmatch.fnmatchcase(name, pattern.replace("[", "[[]"))


def _evaluate_targets(results):
    out = []
    by_name = {case["name"]: case for case in results["cases"]}
    ceiling = results.get("memcpy_GBps")
    for target in TARGETS:
        cases = [c for n, c in by_name.items() if _match(n, target["case"])]
        for case in cases:
            mpx_rows = [c for c in case["contenders"] if c["side"] == "mpx"
                        and _match(c["name"], target["mpx"])]
            if not mpx_rows:
                out.append(dict(target, case_run=case["name"], mpx_run=target["mpx"],
                                state="not measured",
                                note=f"{target['mpx']} is not a contender here"))
            for row in mpx_rows:
                out.append(_evaluate(target, case, row, ceiling))
        if not cases:
            out.append(dict(target, case_run=target["case"], mpx_run=target["mpx"],
                            state="not measured", note="case not in this run"))
    return out


def _evaluate(target, case, row, ceiling):
    res = dict(target, case_run=case["name"], mpx_run=row["name"])
    if row["status"] != "ok":
        why = row.get("reason") or row.get("error") or row["status"]
        return dict(res, state="not measured", note=f"{row['name']}: {why}")
    if "peer" in target:
        peer = next((c for c in case["contenders"] if c["name"] == target["peer"]), None)
        if peer is None or peer["status"] != "ok":
            why = peer and (peer.get("reason") or peer.get("error"))
            return dict(res, state="not measured", note=f"peer {target['peer']}: {why}")
        value = _speedup(case, row["median"], peer["median"])
    elif "ceiling" in target:
        if not ceiling:
            return dict(res, state="not measured", note="memcpy ceiling not measured")
        value = row["median"] / ceiling
    else:
        value = row["median"]
    if "at_least" in target:
        met = value >= target["at_least"]
    else:
        met = value <= target["at_most"]
    return dict(res, state="met" if met else "MISSED", value=value)


def _target_text(t, unit=None):
    if "peer" in t:
        return f">= {t['at_least']:.3g}x {t['peer']}"
    if "ceiling" in t:
        return f">= {t['at_least']:.0%} of {t['ceiling']}"
    return f"<= {t['at_most']:g} {unit or ''}".rstrip()


def _target_value(t, unit=None):
    if "value" not in t:
        return ""
    if "peer" in t:
        return f"{t['value']:.2f}x"
    if "ceiling" in t:
        return f"{t['value']:.1%}"
    return _fmt(t["value"], unit)


# --- rendering -------------------------------------------------------------------------

def _fmt(value, unit):
    if value is None:
        return "-"
    if unit in ("msg/s", "calls/s", "tasks/s"):
        for div, suffix in ((1e6, "M"), (1e3, "k")):
            if value >= div:
                return f"{value / div:.3g}{suffix} {unit}"
        return f"{value:.3g} {unit}"
    if unit == "GB/s" and value < 1:
        return f"{value * 1e3:.3g} MB/s"
    if unit == "us":
        return f"{value:.3g} us"
    if unit == "ms":
        return f"{value:.3g} ms"
    return f"{value:.3g} {unit}"


def _rows(results, default_only=False):
    """Table rows: one per mpx contender that ran (or failed) per case; with
    `default_only`, only each family's default (its first backend, in the
    registry's order of preference, that is available)."""
    units = {c["name"]: c["unit"] for c in results["cases"]}
    marks = {}
    for t in results.get("targets", ()):
        if t["state"] in ("met", "MISSED"):
            marks.setdefault((t["case_run"], t["mpx_run"]), []).append(t["state"])
    rows = []
    for case in results["cases"]:
        if case["kind"] == "memcpy":
            continue
        unit = units[case["name"]]
        best = next((c for c in case["contenders"] if c["name"] == case.get("best_peer")), None)
        peer_cells = (best["name"], _fmt(best["median"], unit)) if best else \
            ("(no peer ran)", "-")
        mpx_rows = [c for c in case["contenders"]
                    if c["side"] == "mpx" and c["status"] in ("ok", "error")]
        if default_only:
            firsts = {}
            for c in mpx_rows:
                firsts.setdefault(c["name"].split("[")[0], c)
            mpx_rows = list(firsts.values())
        if not mpx_rows:
            rows.append([case["name"], "(no mpx contender ran)", "-", "-", *peer_cells,
                         "-", ""])
        for c in mpx_rows:
            label = c["name"].replace("mpx.", "", 1)
            if c["status"] == "error":
                figure = "ERROR (see below)"
                speed = stdlib = "-"
            else:
                figure = _fmt(c["median"], unit)
                if c.get("of_memcpy") is not None and case["size"] >= 1 << 20:
                    figure += f" ({c['of_memcpy']:.0%} memcpy)"
                speed = _times(c.get("speedup_best"))
                stdlib = _times(c.get("speedup_stdlib"))
            states = marks.get((case["name"], c["name"]), [])
            mark = ""
            if states:
                met = states.count("met")
                mark = f"met {met}/{len(states)}" if met == len(states) else \
                    f"MISSED {len(states) - met}/{len(states)}"
            rows.append([case["name"], label, figure, stdlib, *peer_cells, speed, mark])
    return rows


_LEGEND = [
    "vs stdlib: how many times faster mpx is than the multiprocessing object the case",
    "           would use without mpx (mp.Queue, mp.Pipe, mp.Manager), in the same run;",
    "vs best:   the same against the fastest peer of the case (throughput ratios; for",
    "           round trips and hand-offs, the peer's time over mpx's).",
]


def _times(ratio):
    if not ratio:
        return "-"
    for limit, digits in ((10, 2), (100, 1), (1000, 0)):
        if ratio < limit:
            return f"{ratio:.{digits}f}x"
    return f"{ratio:,.0f}x"


HEADER = ["case", "mpx", "mpx figure", "vs stdlib", "best peer", "peer figure", "vs best",
          "targets"]
_RIGHT = (3, 6)          # the ratio columns


def format_table(results, every=False, default_only=False):
    """The plain-text report."""
    out = []
    m = results["machine"]
    reps = results["reps"]
    out.append(f"mpx {results.get('mpx_version', '?')} benchmark ({results['mode']}: "
               f"{reps} timed repetition{'s' if reps > 1 else ''} per contender, median) "
               f"on {m['cores']} cores, {m['cpu']}, Python {m['python']}, {m['os']}")
    if results["mode"] == "smoke":
        out.append("SMOKE RUN: tiny counts that check delivery only; the figures mean nothing.")
    out.append(_backends_text(results))
    out.append("")
    rows = _rows(results, default_only)
    widths = [max(len(str(r[i])) for r in rows + [HEADER]) for i in range(len(HEADER))]
    line = "  ".join(h.ljust(w) for h, w in zip(HEADER, widths)).rstrip()
    out.append(line)
    out.append("-" * len(line))
    last = None
    for r in rows:
        cells = list(r)
        if cells[0] == last:
            cells[0] = ""
        else:
            last = cells[0]
        out.append("  ".join(str(c).rjust(w) if i in _RIGHT else str(c).ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip())
    out.append("")
    out.extend(_LEGEND)
    out.extend(_ceiling_text(results))
    out.extend(_targets_text(results))
    errs = _errors(results)
    if errs:
        out.append("")
        out.append("Errors (no figure is reported for these):")
        for case, name, err in errs:
            out.append(f"  {case}: {name}: {err}")
    if every:
        out.append("")
        out.extend(_every_text(results))
    out.append("")
    out.append(f"{results.get('seconds', '?')} s; command: {results['command']}")
    return "\n".join(out)


def _ceiling_text(results):
    lines = []
    if results.get("memcpy_GBps"):
        lines.append(f"ceiling: memcpy on one core, 256 MiB (from RAM): "
                     f"{results['memcpy_GBps']:.3g} GB/s (the \"% memcpy\" above and the "
                     f"targets use this)")
    if results.get("memcpy_1MiB_GBps"):
        lines.append(f"         1 MiB (in cache): {results['memcpy_1MiB_GBps']:.3g} GB/s "
                     f"(1 MiB messages can stay in cache too)")
    return lines


def _backends_text(results):
    lines = ["mpx backends (from the registry):"]
    for row in results["backends"]:
        if row["available"]:
            lines.append(f"  {row['name']:6} {', '.join(row['families'])}")
        else:
            lines.append(f"  {row['name']:6} not available: {_dedupe(row['reason'])}")
    versions = ", ".join(f"{k} {v}" for k, v in sorted(results["peer_versions"].items()))
    lines.append(f"peers: multiprocessing (stdlib){', ' + versions if versions else ''}")
    for name, why in results["peers"].items():
        if why:
            lines.append(f"  {name}: {why}")
    return "\n".join(lines)


def _targets_text(results):
    targets = results.get("targets", ())
    if not targets:
        return []
    units = {c["name"]: c["unit"] for c in results["cases"]}
    lines = ["", "Targets (ratios against peers measured in this run):"]
    absent = sorted({t["case_run"] for t in targets if t.get("note") == "case not in this run"})
    heading = None
    for t in targets:
        if t.get("note") == "case not in this run":
            continue
        if t.get("checks") != heading:
            heading = t.get("checks")
            if heading:
                lines.append(f"  {heading}:")
        unit = units.get(t["case_run"])
        what = f"{t['case_run']}: {t['mpx_run'].replace('mpx.', '', 1)} " \
               f"{_target_text(t, unit)}"
        if t["state"] in ("met", "MISSED"):
            lines.append(f"    {t['state']:7} {what}: {_target_value(t, unit)}")
        else:
            lines.append(f"    {'-':7} {what}: not measured ({t['note']})")
    if absent:
        skipped = sum(1 for t in targets if t.get("note") == "case not in this run")
        lines.append(f"  ({skipped} more for cases not in this run: {', '.join(absent)})")
    return lines


def _every_text(results):
    lines = ["Every contender (median of the timed repetitions):"]
    for case in results["cases"]:
        lines.append(f"  {case['name']} - {case['title']}")
        live = [c for c in case["contenders"] if c["status"] == "ok"]
        pick = (lambda c: -c["median"]) if case["higher_is_better"] else (lambda c: c["median"])
        for c in sorted(live, key=pick):
            spread = ""
            if len(c["figures"]) > 1:
                spread = f"  [{_fmt(min(c['figures']), case['unit'])} .. " \
                         f"{_fmt(max(c['figures']), case['unit'])}]"
            lines.append(f"      {c['name']:24} {_fmt(c['median'], case['unit']):>14}{spread}")
        for c in case["contenders"]:
            if c["status"] != "ok":
                why = c.get("reason") or c.get("error")
                lines.append(f"      {c['name']:24} {c['status']}: {why}")
    return lines


def format_markdown(results, default_only=False):
    """The README's table: Markdown, with the machine it was measured on."""
    m = results["machine"]
    out = [f"Measured on {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB RAM, "
           f"{m['os']}, Python {m['python']}, numpy {m.get('numpy', '?')}, "
           f"on {results['started'][:10]} with `{results['command']}` "
           f"({results['reps']} timed repetitions per contender, median).", ""]
    out.append("| " + " | ".join(HEADER) + " |")
    out.append("|" + "|".join(["---", "---", "---:", "---:", "---", "---:", "---:", "---"])
               + "|")
    for r in _rows(results, default_only):
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    out.append("")
    out.append(" ".join(" ".join(_LEGEND).split()))
    ceiling = _ceiling_text(results)
    if ceiling:
        out.append(" ".join(" ".join(ceiling).split()) + ".")
    missing = [f"{r['name']} ({_dedupe(r['reason'])})"
               for r in results["backends"] if not r["available"]]
    if missing:
        out.append("Not measured (backend not available in this build): "
                   + "; ".join(missing) + ".")
    absent = [f"{n} ({why})" for n, why in results["peers"].items() if why]
    if absent:
        out.append("Peers missing: " + "; ".join(absent) + ".")
    return "\n".join(out)


def plot(results, path):
    """Throughput against message size, for mpx and each peer, one panel
    per payload kind (bytes, numpy arrays, Pipe bytes)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("queue", "bytes", "Queue, bytes"), ("queue", "numpy", "Queue, numpy arrays"),
              ("pipe", "bytes", "Pipe, send_bytes")]
    series = {}
    for case in results["cases"]:
        if case["kind"] != "stream" or case["unit"] != "GB/s" \
                or case["producers"] != 1 or case["consumers"] != 1:
            continue
        family = case["name"].split("-")[0]
        for c in case["contenders"]:
            if c["status"] == "ok":
                series.setdefault((family, case["payload"]), {}).setdefault(
                    c["name"], []).append((case["size"], c["median"]))
    used = [p for p in panels if series.get(p[:2])]
    if not used:
        raise ValueError("no throughput-by-size cases in these results to plot")
    # A panel with one size says nothing about size: leave it out when
    # another panel has a curve.
    curves = [p for p in used if len({x for pts in series[p[:2]].values() for x, _ in pts}) > 1]
    used = curves or used
    names = sorted({n for p in used for n in series[p[:2]]})
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    colors = {n: cmap(i % cmap.N) for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, len(used), figsize=(6.5 * len(used), 4.8), squeeze=False)
    ceiling = results.get("memcpy_GBps")
    for ax, (family, payload, title) in zip(axes[0], used):
        sizes = set()
        for name, points in sorted(series[(family, payload)].items()):
            points.sort()
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            sizes.update(xs)
            ours = name.startswith("mpx.")
            ax.plot(xs, ys, "-o" if ours else "--s", label=name, color=colors[name],
                    linewidth=2.2 if ours else 1)
        if ceiling:
            ax.axhline(ceiling, color="black", linestyle=":", label="memcpy (1 core)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted(sizes))
        ax.set_xticklabels([cases_mod._size_name(x) for x in sorted(sizes)])
        ax.minorticks_off()
        ax.set_xlabel("message size")
        ax.set_ylabel("GB/s (median)")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    m = results["machine"]
    fig.suptitle(f"mpx vs peers: {m['cores']} cores, {m['cpu']}, Python {m['python']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
