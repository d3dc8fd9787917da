"""The web demo (``slim app``, ``slim_diffusers.app``) on the bundled model: its functions through
``gradio_client`` against a server started here on 127.0.0.1, and one end-to-end run in headless Chromium."""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio", reason="the web demo's tests need gradio: pip install -e '.[test]'")
gradio_client = pytest.importorskip("gradio_client")

from slim_diffusers import SLIMBitstream  # noqa: E402
from slim_diffusers.app import SLIMDemo, build_demo, launch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return SLIMDemo("toy", work_dir=str(tmp_path_factory.mktemp("app")))


@pytest.fixture(scope="module")
def server(demo):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    page = build_demo(demo=demo)
    port = free_port()
    launch(page, port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    page.close()


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server, verbose=False)


def star(demo) -> Path:
    return next(p for p in demo.bundled_images() if p.name == "striped_star.png")


def test_compress_reports_the_files_own_bytes_and_rises_with_the_rate(demo, client, tmp_path):
    image = star(demo)
    results = {}
    for rate in (0, demo.rate_levels - 1):
        summary, num_bytes, bpp, sent, slim_file, gallery, decoded, bit_map, top_original, top_decoded = client.predict(
            gradio_client.handle_file(str(image)), rate, 2, 0.5, "a star", api_name="/compress")
        bitstream = SLIMBitstream.load(slim_file)  # the download is the .slim file itself
        assert num_bytes == Path(slim_file).stat().st_size == bitstream.num_bytes
        assert bpp == pytest.approx(num_bytes * 8 / (96 * 96), abs=1e-6) and f"{num_bytes} bytes" in summary
        assert sent == bitstream.caption == "a star" and bitstream.rate == rate
        assert [item["caption"] for item in gallery] == ["original", "decoded without diffusion",
                                                         "decoded with diffusion"]
        assert Path(decoded).is_file() and Path(bit_map).is_file()
        for top in (top_original, top_decoded):
            assert len(top["confidences"]) == 5 and top["label"] == top["confidences"][0]["label"]
        results[rate] = (num_bytes, top_original["label"])
    low, high = results[0], results[demo.rate_levels - 1]
    assert low[0] < high[0]
    assert low[1] == high[1] == "striped star"  # the classifier reads the original as its class


def test_an_uploaded_slim_file_decodes_with_the_clis_checks_and_one_line_errors(demo, client, tmp_path):
    coded = demo.compress_and_decode(str(star(demo)), rate=3, caption="a star")
    summary, gallery, bit_map, top = client.predict(gradio_client.handle_file(str(coded.slim_path)), 2, 0.5,
                                                    api_name="/decode")
    assert f"{coded.num_bytes} bytes" in summary and "a star" in summary and len(gallery) == 2

    corrupt = tmp_path / "corrupt.slim"
    corrupt.write_bytes(coded.slim_path.read_bytes()[:-6])
    huge = tmp_path / "huge.slim"  # a valid header claiming a 16384² image: refused before any decoding
    exact = demo.pipe.decompressor.exact_entropy_model
    SLIMBitstream(height=16384, width=16384, fingerprint=demo.pipe.decompressor.fingerprint(), caption="",
                  payload=bytes(8), exact_entropy_model=exact, rate=6).save(huge)
    other = tmp_path / "other.slim"
    SLIMBitstream(height=96, width=96, fingerprint=bytes(4), caption="", payload=bytes(8), exact_entropy_model=exact,
                  rate=6).save(other)
    for path, expected in [(corrupt, "SLIMBitstreamError: corrupt.slim"), (huge, "SLIMDecodeLimitError: huge.slim"),
                           (other, "SLIMModelMismatchError: other.slim: written by model 00000000")]:
        with pytest.raises(gradio_client.exceptions.AppError) as info:
            client.predict(gradio_client.handle_file(str(path)), 2, 0.5, api_name="/decode")
        message = str(info.value)
        assert message.startswith(expected) and "\n" not in message and "Traceback" not in message
        assert str(tmp_path) not in message and "/gradio/" not in message  # the server's temporary paths stay hidden


def test_mistakes_are_one_line_in_the_page(demo, client, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    big = tmp_path / "big.png"
    import PIL.Image

    PIL.Image.new("RGB", (1100, 1000)).save(big)
    # gradio's image component refuses a file that is no image before the demo sees it; the demo's own check
    # says the CLI's line for callers of SLIMDemo
    with pytest.raises(ValueError, match="notes.png: not an image Pillow can read"):
        demo.compress_and_decode(str(text))
    with pytest.raises(ValueError, match=r"strength: expected a number in \(0, 1\], got 0"):
        demo.compress_and_decode(str(star(demo)), strength=0)
    for args, expected in [((None, 3, 2, 0.5, ""), "no image"),
                           ((str(big), 3, 2, 0.5, ""), "1100×1000 pixels; this demo codes images up to 1048576"),
                           ((str(star(demo)), 3, 2, 1.5, ""), "Value 1.5 is greater than maximum value 1.0")]:
        file = gradio_client.handle_file(args[0]) if args[0] else None
        with pytest.raises(gradio_client.exceptions.AppError) as info:
            client.predict(file, *args[1:], api_name="/compress")
        assert expected in str(info.value) and "\n" not in str(info.value)


def test_slim_app_refuses_a_wrong_model_in_one_line_before_loading_anything(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "slim_diffusers.cli", "app", "--model", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no SLIM model at" in done.stderr


def browser_missing() -> str:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not (CHROMIUM and CHROMEDRIVER):
        return ("no headless Chromium: install Debian's chromium and chromium-driver "
                "(apt-get install -y chromium chromium-driver; .ci/run does)")
    return ""


@pytest.mark.skipif(bool(browser_missing()), reason=browser_missing() or "-")
def test_in_a_browser_upload_move_the_rate_slider_read_bytes_and_decoded_image(demo, server, tmp_path):
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download a browser or driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1250"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        wait = WebDriverWait(driver, 120)
        driver.get(server)
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#image input[type=file]")))
        driver.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(star(demo)))
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#image img")))
        driver.find_element(By.CSS_SELECTOR, "#caption textarea").send_keys("a star")
        # move the rate slider from the highest level down to 2 with the keyboard, as a user would
        slider = driver.find_element(By.CSS_SELECTOR, "#rate input[type=range]")
        start = int(float(slider.get_attribute("value")))
        slider.click()
        for key in [Keys.END] + [Keys.ARROW_LEFT] * (demo.rate_levels - 1 - 2):
            slider.send_keys(key)
        assert start == demo.rate_levels - 1 and float(slider.get_attribute("value")) == 2
        driver.find_element(By.CSS_SELECTOR, "#run").click()
        # the decoded image appears when the request is done; the byte count is filled in by the same response
        decoded = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#decoded img")))
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", decoded))
        shown = int(float(driver.find_element(By.CSS_SELECTOR, "#bytes input").get_attribute("value")))
        size = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", decoded)
        # what the page shows is what the library writes for this image and caption at rate 2
        expected = demo.compress_and_decode(str(star(demo)), rate=2, caption="a star")
        assert shown == expected.num_bytes and size == [96, 96]
        time.sleep(1)  # let the gallery and the bit-allocation map finish drawing before the picture is taken
        shot = tmp_path / "app.png"
        driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("SLIM_APP_SCREENSHOT"):  # how docs/app.png is made
            shutil.copy(shot, os.environ["SLIM_APP_SCREENSHOT"])
    finally:
        driver.quit()


def test_only_the_newest_request_folders_are_kept(tmp_path, monkeypatch):
    import slim_diffusers.app as app

    demo = SLIMDemo.__new__(SLIMDemo)  # the folder bookkeeping needs no model
    demo.work_dir = tmp_path
    monkeypatch.setattr(app, "KEPT_REQUESTS", 3)
    made = []
    for i in range(5):
        made.append(demo._request_dir())
        os.utime(made[-1], (i, i))  # oldest first, whatever the file system's clock resolution
    assert sorted(p for p in tmp_path.iterdir()) == sorted(made[-3:])
