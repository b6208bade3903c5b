"""Render the app icons (PNG) from their SVGs with the Chromium the tests use.

    .venv/bin/python tools/render_icons.py

The PNGs are committed; run this again after changing web/favicon.svg or
web/icons/maskable.svg.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from playwright.async_api import async_playwright

WEB = Path(__file__).resolve().parents[1] / "web"
CHROMIUM = os.environ.get("RELAY_CHROMIUM", "/usr/bin/chromium")
# (source SVG, size, output): "any" icons keep their rounded corners, maskable ones bleed.
ICONS = [
    ("favicon.svg", 192, "icons/icon-192.png"),
    ("favicon.svg", 512, "icons/icon-512.png"),
    ("icons/maskable.svg", 512, "icons/maskable-512.png"),
    ("icons/maskable.svg", 180, "icons/apple-touch-icon.png"),
]


async def main() -> None:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for source, size, out in ICONS:
            page = await browser.new_page(viewport={"width": size, "height": size})
            svg = (WEB / source).read_text()
            await page.set_content(
                "<style>html,body{margin:0;background:transparent}svg{display:block;"
                f"width:{size}px;height:{size}px}}</style>{svg}"
            )
            await page.screenshot(path=str(WEB / out), omit_background=True)
            await page.close()
            print(f"wrote web/{out} ({size}x{size})")
        await browser.close()


if __name__ == "__main__":
    asyncio.run(main())
