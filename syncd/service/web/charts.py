"""Small charts as inline SVG, drawn on the server: no script and no library in the browser.

Colours come from the page's style sheet (a class per state), so a chart follows the page's theme."""

from __future__ import annotations

from datetime import datetime
from html import escape

from syncd.service.web.model import DURATION_BOUNDS, ChartData

OUTCOMES = ("succeeded", "failed", "cancelled", "timed_out", "rejected", "validated")
WIDTH, HEIGHT, AXIS = 480, 120, 16


def _svg(label: str, body: list[str]) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT + AXIS}" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>"
    )


def _duration_label(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:g}s"
    if seconds < 3600:
        return f"{seconds / 60:g}m"
    return f"{seconds / 3600:g}h"


def outcomes_chart(data: ChartData) -> str:
    """Stacked bars: jobs that ended in each interval, by how they ended."""
    bars = len(data.outcomes)
    top = max([sum(b.values()) for b in data.outcomes] + [1])
    slot = WIDTH / bars
    body = [f'<line class="axis" x1="0" y1="{HEIGHT}" x2="{WIDTH}" y2="{HEIGHT}"/>']
    for i, counts in enumerate(data.outcomes):
        x, y = i * slot, float(HEIGHT)
        when = datetime.fromtimestamp(data.start + i * data.bar).strftime("%a %H:%M")
        for state in OUTCOMES:
            n = counts.get(state, 0)
            if not n:
                continue
            h = n / top * (HEIGHT - 4)
            y -= h
            body.append(
                f'<rect class="st-{state}" x="{x + 1:.1f}" y="{y:.1f}" width="{max(slot - 2, 1):.1f}" '
                f'height="{h:.1f}"><title>{when}: {n} {state}</title></rect>'
            )
    labels = 4
    for k in range(labels + 1):
        at = data.start + data.span * k / labels
        x = min(max(WIDTH * k / labels, 20), WIDTH - 20)
        text = datetime.fromtimestamp(at).strftime("%H:%M" if data.span <= 86400 else "%a %d")
        body.append(f'<text x="{x:.0f}" y="{HEIGHT + 13}" text-anchor="middle">{text}</text>')
    body.append(f'<text x="2" y="10">{top}</text>')
    return _svg("jobs ended per interval, by outcome", body)


def histogram(counts: list[int], label: str) -> str:
    """One bar per duration bucket (under 1s, 1-10s, … over 6h)."""
    top = max(counts + [1])
    slot = WIDTH / len(counts)
    edges = ["0", *(_duration_label(b) for b in DURATION_BOUNDS)]
    body = [f'<line class="axis" x1="0" y1="{HEIGHT}" x2="{WIDTH}" y2="{HEIGHT}"/>']
    for i, n in enumerate(counts):
        name = f"{edges[i]}–{edges[i + 1]}" if i + 1 < len(edges) else f"over {edges[i]}"
        h = n / top * (HEIGHT - 14)
        x = i * slot
        body.append(
            f'<rect class="bar" x="{x + 4:.1f}" y="{HEIGHT - h:.1f}" width="{slot - 8:.1f}" height="{h:.1f}">'
            f"<title>{escape(label)} {name}: {n} job(s)</title></rect>"
        )
        if n:
            body.append(f'<text x="{x + slot / 2:.0f}" y="{HEIGHT - h - 3:.0f}" text-anchor="middle">{n}</text>')
        body.append(f'<text x="{x + slot / 2:.0f}" y="{HEIGHT + 13}" text-anchor="middle">{name}</text>')
    return _svg(label, body)
