"""The PNG plot: TTFA percentiles (p50, p95, p99) against concurrency, one line per mode and percentile, drawn with
Pillow (no plotting library needed)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

_COLOURS = {"webrtc": (31, 119, 180), "inprocess": (214, 39, 40), "engine": (44, 160, 44)}
_SHADES = {"p50": 1.0, "p95": 0.7, "p99": 0.45}
_WIDTHS = {"p50": 3, "p95": 2, "p99": 1}


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(255 - (255 - c) * factor) for c in colour)


def ttfa_plot(
    series: dict[str, dict[int, dict[str, float | None]]],
    path: str | Path,
    title: str = "time to first audio against concurrency",
    size: tuple[int, int] = (900, 560),
) -> Path:
    """series: {mode: {sessions: {"p50": s, "p95": s, "p99": s}}}; writes a PNG at ``path``."""
    width, height = size
    left, right, top, bottom = 80, 200, 50, 60
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1: the bitmap font
        font = ImageFont.load_default()
    levels = sorted({n for points in series.values() for n in points})
    values = [v for points in series.values() for p in points.values() for v in p.values() if v is not None]
    y_max = max(values) * 1.15 if values else 1.0
    plot_w, plot_h = width - left - right, height - top - bottom

    def x_of(n: int) -> float:
        if len(levels) == 1:
            return left + plot_w / 2
        return left + plot_w * levels.index(n) / (len(levels) - 1)

    def y_of(v: float) -> float:
        return top + plot_h * (1 - v / y_max)

    draw.text((left, 15), title, fill="black", font=font)
    for i in range(6):  # horizontal grid with seconds
        v = y_max * i / 5
        y = y_of(v)
        draw.line([left, y, left + plot_w, y], fill=(225, 225, 225))
        draw.text((left - 50, y - 6), f"{v:.2f} s", fill="black", font=font)
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    for n in levels:
        x = x_of(n)
        draw.line([x, top + plot_h, x, top + plot_h + 5], fill="black")
        draw.text((x - 4, top + plot_h + 10), str(n), fill="black", font=font)
    draw.text((left + plot_w / 2 - 50, height - 25), "concurrent sessions", fill="black", font=font)

    legend_y = top
    for mode, points in series.items():
        base = _COLOURS.get(mode, (90, 90, 90))
        for q in ("p50", "p95", "p99"):
            colour = _shade(base, _SHADES[q])
            xy = [(x_of(n), y_of(points[n][q])) for n in sorted(points) if points[n].get(q) is not None]
            if len(xy) > 1:
                draw.line(xy, fill=colour, width=_WIDTHS[q])
            for x, y in xy:
                draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
            draw.line(
                [width - right + 15, legend_y + 6, width - right + 40, legend_y + 6], fill=colour, width=_WIDTHS[q] + 1
            )
            draw.text((width - right + 48, legend_y), f"{mode} {q}", fill="black", font=font)
            legend_y += 18
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
