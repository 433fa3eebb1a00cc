"""The page of ds2 serve in a real headless browser: Debian's chromium, its fake microphone
playing a WAV file of synthesized speech, driven by playwright."""

import shutil

import pytest
import soundfile
import torch

from ds2.espeak import synthesize
from ds2.serve import Engine, ServeOptions, running
from test_serve import NO_ENDPOINT, checkpoint, speech  # noqa: F401  (fixtures)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail("no chromium: `bash scripts/setup.sh --test` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        yield playwright.chromium, CHROMIUM


def test_the_page_streams_the_microphone_and_shows_the_live_transcript(browser, checkpoint, tmp_path):  # noqa: F811
    chromium, executable = browser
    words = synthesize("the cat sat on the mat. a dog ran in the park.", "en-us", 160, 50)
    microphone = tmp_path / "microphone.wav"
    soundfile.write(microphone, torch.cat([words, torch.zeros(8000)] * 3).numpy(), 16000, subtype="PCM_16")
    engine = Engine(str(checkpoint[0]), ServeOptions(**NO_ENDPOINT))
    with running(engine) as url:
        browser = chromium.launch(executable_path=executable, args=[
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={microphone}", "--no-sandbox", "--autoplay-policy=no-user-gesture-required",
        ])
        try:
            page = browser.new_page()
            messages = []
            page.on("console", lambda message: messages.append(message.text))
            page.goto(url + "/")
            assert page.title() == "ds2 live transcription"
            page.click("#record")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('Listening')",
                                   timeout=30_000)
            # partials appear while the microphone plays, and change as more audio arrives
            page.wait_for_function("document.getElementById('partial').textContent.length > 0", timeout=30_000)
            first = page.text_content("#partial")
            page.wait_for_function(f"document.getElementById('partial').textContent !== {first!r}",
                                   timeout=30_000)
            page.wait_for_timeout(1500)
            page.click("#stop")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')",
                                   timeout=30_000)
            status = page.text_content("#status")
            seconds = float(status.split()[1])
            assert seconds >= 2.0, status
            final = page.text_content("#finals").strip()
            assert final and page.text_content("#partial") == ""
            # the final's words carry their times (hover titles)
            titles = page.eval_on_selector_all(".word", "nodes => nodes.map(n => n.title)")
            assert len(titles) == len(final.split()) and all(" s, confidence " in t for t in titles)
        finally:
            browser.close()
    # the server heard as much audio as the page reports sending
    metrics = engine.metrics.text().decode()
    heard = float(next(line.split()[1] for line in metrics.splitlines()
                       if line.startswith("ds2_audio_seconds_total")))
    assert heard == pytest.approx(seconds, abs=0.2), messages
