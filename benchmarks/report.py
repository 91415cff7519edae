"""Printing the results: one table per scenario, then the targets."""

from __future__ import annotations

from typing import Any

from workspace import say

VARIANTS = {
    "a": "(a) portal-boot run",
    "b": "(b) guide pipeline (sh)",
    "c": "(c) bare uvicorn",
}
VERDICT = {True: "met", False: "MISSED", None: "n/a"}


def _fmt(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.0f} ms"


def print_boot_table(name: str, data: dict[str, Any]) -> None:
    say()
    say(
        f"== {name}: {data['kind']} boot, {data['description']} + 2 core revisions, "
        f"median of {data['runs']} interleaved runs =="
    )
    say(
        f"{'variant':<28}{'median':>10}{'min':>10}{'max':>10}{'ok':>6}   where the time goes (medians)"
    )
    for variant, entry in data["variants"].items():
        detail = ""
        if "exec_median_ms" in entry:
            detail = f"exec after {_fmt(entry['exec_median_ms'])}, then {_fmt(entry['after_exec_median_ms'])} to 200"
        if "steps_median_ms" in entry:
            steps = entry["steps_median_ms"]
            detail += (
                "; "
                + ", ".join(f"{k} {v:.0f}" for k, v in steps.items())
                + " ms (portal-boot's log)"
            )
        say(
            f"{entry['label']:<28}{_fmt(entry['median_ms']):>10}{_fmt(entry['min_ms']):>10}"
            f"{_fmt(entry['max_ms']):>10}{entry['ok_runs']:>4}/{data['runs']}   {detail}"
        )
    say(f"{'ratio (median of per-run)':<28}{'value':>10}{'target':>10}   result")
    for pair, ratio in data["ratios"].items():
        value = "-" if ratio["median"] is None else f"{ratio['median']:.2f}x"
        target = "-" if ratio["target"] is None else f"<={ratio['target']:.2f}x"
        result = {True: "met", False: "MISSED", None: "n/a" if ratio["target"] else "(info)"}[
            ratio["met"]
        ]
        say(f"{pair:<28}{value:>10}{target:>10}   {result}")
    for variant, entry in data["variants"].items():
        for failure in entry["failures"]:
            say(f"  {VARIANTS[variant]} FAILED ({failure.splitlines()[0] if failure else ''})")
            for line in failure.splitlines()[1:]:
                say(f"      {line}")


def print_wait_table(data: dict[str, Any]) -> None:
    say()
    say(
        f"== wait: database started {data['delay_s']:.1f} s after the waiters, lag = waiter's exit - "
        f"first answered query, median of {data['runs']} runs =="
    )
    say(f"   (server start -> first answered query: {_fmt(data['server_ready_after_start_ms'])})")
    say(f"{'waiter':<34}{'median':>10}{'mean':>10}{'p90':>10}{'min':>10}{'max':>10}{'ok':>7}")
    for entry in data["variants"].values():
        say(
            f"{entry['label']:<34}{_fmt(entry['median_ms']):>10}{_fmt(entry['mean_ms']):>10}"
            f"{_fmt(entry['p90_ms']):>10}{_fmt(entry['min_ms']):>10}{_fmt(entry['max_ms']):>10}"
            f"{entry['ok_runs']:>4}/{data['runs']}"
        )
    result = {True: "met", False: "MISSED", None: "n/a"}[data["met"]]
    say(f"target: portal-boot's lag <= {data['target_ms']:.0f} ms: {result}")
    for failure in data["failures"]:
        say(f"  FAILED: {failure}")


def print_summary(report: dict[str, Any]) -> None:
    say()
    say("== targets ==")
    for name, data in report["scenarios"].items():
        if "error" in data:
            say(f"{name:<10} scenario failed: {data['error'].splitlines()[0]}")
        elif name == "wait":
            lag = data["variants"]["a"]["median_ms"]
            say(
                f"{name:<10} lag {_fmt(lag)} (target <= {data['target_ms']:.0f} ms): "
                f"{ {True: 'met', False: 'MISSED', None: 'n/a'}[data['met']] }"
            )
        else:
            for pair, ratio in data["ratios"].items():
                if ratio["target"] is None:
                    continue
                value = "-" if ratio["median"] is None else f"{ratio['median']:.2f}x"
                verdict = {True: "met", False: "MISSED", None: "n/a"}[ratio["met"]]
                say(f"{name:<10} {pair} = {value:>7} (target <= {ratio['target']:.2f}x): {verdict}")
