"""Every text of batchflow.css meets WCAG AA contrast (4.5:1) in the light and the dark scheme.

Pure Python: the colours are read from the stylesheet itself (the ``--bf-*`` custom properties of
``:root`` and of its dark-scheme override), so a changed colour is checked without a browser. The
pairs checked are every rule that sets both a text colour and a solid background (badges,
notices, buttons, the outcome's mark), and every text colour a rule sets without a background of
its own, on each background a page puts text on.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

CSS = (Path(ROOT) / "static" / "batchflow" / "batchflow.css").read_text(encoding="utf-8")

#: WCAG 2.x AA for normal text.
AA = 4.5
#: Badges are small (0.78 rem) on tinted backgrounds: they keep a margin over AA, so that a
#: slightly different rendering (font smoothing, a host's font) does not take them under it.
BADGE_MIN = 4.8
#: What text sits on when its rule sets no background: the page, a card, a raised cell.
PLAIN_BACKGROUNDS = ("--bf-bg", "--bf-surface", "--bf-raised")
#: Text on a tinted block whose background comes from an enclosing rule: (text, background).
NESTED = [
    ("--bf-text", "--bf-info-bg"),  # a notice
    ("--bf-text", "--bf-bad-bg"),  # the cancel confirmation
    ("--bf-muted", "--bf-neutral-bg"),  # an outcome's text, per outcome
    ("--bf-muted", "--bf-good-bg"),
    ("--bf-muted", "--bf-warn-bg"),
    ("--bf-muted", "--bf-bad-bg"),
    ("--bf-text", "--bf-neutral-bg"),  # an outcome's title, per outcome
    ("--bf-text", "--bf-good-bg"),
    ("--bf-text", "--bf-warn-bg"),
    ("--bf-bad", "--bf-bad-bg"),  # an outcome's error line
]
#: Rules whose ``color`` paints no text (``currentColor`` of a bar).
NOT_TEXT = re.compile(r"\.bf-progress")


def _declarations(body: str) -> dict[str, str]:
    found = {}
    for declaration in re.sub(r"/\*.*?\*/", "", body, flags=re.S).split(";"):
        name, _, value = declaration.partition(":")
        if value:
            found[name.strip()] = value.strip()
    return found


def palettes() -> dict[str, dict[str, str]]:
    """The custom properties of each scheme: light (``:root``), dark (light, then its override)."""
    dark_block = re.search(r"@media \(prefers-color-scheme: dark\) \{\s*:root \{([^}]*)\}", CSS)
    light_block = re.search(r"^:root \{([^}]*)\}", CSS, re.M)
    assert light_block and dark_block, "batchflow.css has no :root or no dark :root block"
    light = _declarations(light_block.group(1))
    return {"light": light, "dark": {**light, **_declarations(dark_block.group(1))}}


def rules() -> list[tuple[str, dict[str, str]]]:
    """(selector, declarations) of every plain rule, at any depth of @media, one entry per
    selector of a list."""
    css = re.sub(r"/\*.*?\*/", "", CSS, flags=re.S)
    found = []
    for selectors, body in re.findall(r"([^{};]+)\{([^{}]*)\}", css):
        for selector in selectors.split(","):
            selector = selector.strip()
            if not selector.startswith(("@", ":root", "from", "to", "50%")):
                found.append((selector, _declarations(body)))
    return found


def base_colour(selector: str, colours: dict[str, str]) -> str | None:
    """The text colour a modifier rule (``.bf-x--y::before``) inherits from its base rule
    (``.bf-x::before``) when it sets only a background."""
    base = re.sub(r"--[\w-]+", "", selector)
    return colours.get(base) if base != selector else None


def resolve(value: str, palette: dict[str, str]) -> str | None:
    """A ``#rgb``/``#rrggbb`` colour, following ``var()``; None for anything else."""
    for _ in range(5):
        match = re.fullmatch(r"var\((--[\w-]+)\)", value.strip())
        if not match:
            break
        value = palette[match.group(1)]
    value = value.strip()
    if re.fullmatch(r"#[0-9a-fA-F]{3}", value):
        value = "#" + "".join(c * 2 for c in value[1:])
    return value.lower() if re.fullmatch(r"#[0-9a-fA-F]{6}", value) else None


def luminance(colour: str) -> float:
    def channel(hex2: str) -> float:
        c = int(hex2, 16) / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(colour[i : i + 2]) for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    """WCAG 2.x contrast ratio of two ``#rrggbb`` colours."""
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def pairs() -> list[tuple[str, str, str, float]]:
    """(what, text colour, background, minimum ratio) for every text pair of the stylesheet."""
    found: list[tuple[str, str, str, float]] = []
    every = rules()
    colours = {selector: decls["color"] for selector, decls in every if "color" in decls}
    for selector, decls in every:
        background = decls.get("background") or decls.get("background-color")
        color = decls.get("color") or (background and base_colour(selector, colours))
        if not color or NOT_TEXT.search(selector) or color in ("inherit", "currentColor"):
            continue
        minimum = BADGE_MIN if ".bf-badge" in selector else AA
        if background:
            found.append((selector, color, background, minimum))
        else:
            found += [(selector, color, f"var({b})", minimum) for b in PLAIN_BACKGROUNDS]
    found += [(f"{t} on {b}", f"var({t})", f"var({b})", AA) for t, b in NESTED]
    return found


def test_the_checker_reads_the_stylesheet():
    # Guards against a parser that finds nothing and so passes everything.
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)
    found = pairs()
    badges = [p for p in found if ".bf-badge" in p[0]]
    assert len(badges) >= 5 and len(found) >= 40
    for scheme, palette in palettes().items():
        for what, fg, bg, _ in badges:
            assert resolve(fg, palette) and resolve(bg, palette), (scheme, what)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_text_meets_wcag_aa(scheme):
    palette = palettes()[scheme]
    failures = []
    checked = 0
    for what, fg, bg, minimum in pairs():
        text, background = resolve(fg, palette), resolve(bg, palette)
        if text is None or background is None:
            continue  # a gradient or a transparent colour: nothing to compute
        checked += 1
        ratio = contrast(text, background)
        if ratio < minimum:
            failures.append(f"{what}: {text} on {background} is {ratio:.2f}:1, needs {minimum}")
    assert checked >= 40
    assert not failures, f"{scheme} scheme:\n" + "\n".join(failures)
