"""The page at `/` in headless Chromium (Debian's `chromium`, driven by Playwright through
`executable_path`; Playwright's own browser download is never used)."""

import os
import shutil

import httpx
from playwright.sync_api import sync_playwright

from tests.serving.conftest import ROOT

ARTIFACTS = os.path.join(ROOT, ".ci", "artifacts")


def test_page_streams_a_completion_and_fills_a_mask(server):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (scripts/setup.sh test installs it)"
    prompt = "Hello world"
    expected = httpx.post(
        server.url + "/v1/completions",
        json={"model": "gpt2", "prompt": prompt, "max_tokens": 24, "temperature": 0},
        timeout=60,
    ).json()["choices"][0]["text"]
    os.makedirs(ARTIFACTS, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.goto(server.url + "/")
            page.wait_for_function("document.querySelectorAll('#model option').length == 2")

            page.select_option("#model", "bert")
            page.fill("#text", "今天天气很[MASK]。")
            page.click("#fill-mask")
            page.wait_for_selector("#output table")
            assert page.locator("#output table tr").count() == 1 + 5  # header + top 5

            page.select_option("#model", "gpt2")
            page.fill("#text", prompt)
            page.fill("#max-tokens", "24")
            # count the changes of the output while the answer streams in
            page.evaluate(
                """() => { window.updates = 0;
                new MutationObserver((records) => window.updates += records.length).observe(
                    document.getElementById('output'),
                    {childList: true, subtree: true, characterData: true}); }"""
            )
            page.click("#complete")
            page.wait_for_function(
                "document.getElementById('finish').textContent.includes('[done]')",
                timeout=60000,
            )
            shown = page.evaluate("document.getElementById('completion').textContent")
            assert shown == expected
            assert page.evaluate("window.updates") > 5  # piece by piece, not all at once
            assert "finish_reason: length" in page.inner_text("#finish")
            page.screenshot(path=os.path.join(ARTIFACTS, "page.png"), full_page=True)
        finally:
            browser.close()
    assert os.path.getsize(os.path.join(ARTIFACTS, "page.png")) > 1000
