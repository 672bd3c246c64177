"""The demo in a real browser: headless Chromium driven by selenium against ``python -m sdt_gen.demo``.

Runs on tiny random pipelines; ``SDT_DEMO_MODEL`` / ``SDT_DEMO_COMPARE`` point it at real ones and
``SDT_DEMO_SCREENSHOTS`` at a folder that keeps the screenshots of each tab (the README's come from
trained MNIST pipelines this way).
"""

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as ready  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from test_demo_requests import tiny_pipeline  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run installs them)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[str, str]:
    if os.environ.get("SDT_DEMO_MODEL"):
        return os.environ["SDT_DEMO_MODEL"], os.environ["SDT_DEMO_COMPARE"]
    folder = tmp_path_factory.mktemp("pipelines")
    tiny_pipeline("cag").save_pretrained(folder / "cag")
    tiny_pipeline("none").save_pretrained(folder / "none")
    return str(folder / "cag"), str(folder / "none")


@pytest.fixture(scope="module")
def server(models):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    process = subprocess.Popen(
        [sys.executable, "-m", "sdt_gen.demo", "--model", models[0], "--compare", models[1], "--port", str(port),
         "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            assert process.poll() is None, process.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the demo did not start serving"
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def screenshot(driver, name: str, tmp_path: Path) -> None:
    driver.save_screenshot(str(tmp_path / name))
    if os.environ.get("SDT_DEMO_SCREENSHOTS"):
        shutil.copy(tmp_path / name, Path(os.environ["SDT_DEMO_SCREENSHOTS"]) / name)


def image_in(driver, elem_id: str, previous: str | None = None, timeout: float = 120) -> tuple[Image.Image, str]:
    """The image Gradio shows in ``#elem_id`` once there is one (another than ``previous``), fetched as the browser does."""
    def shown(d):
        found = d.find_elements(By.CSS_SELECTOR, f"#{elem_id} img")
        src = found[0].get_attribute("src") if found else None
        return src if src and src != previous else False

    src = WebDriverWait(driver, timeout).until(shown)
    with urllib.request.urlopen(src) as response:
        return Image.open(io.BytesIO(response.read())).convert("RGB"), src


def choose_class(driver, elem_id: str, name: str) -> None:
    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
    box.click()
    box.send_keys(name)
    box.send_keys(Keys.ENTER)
    box.send_keys(Keys.ESCAPE)


def open_tab(driver, title: str) -> None:
    tab = next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role='tab']") if b.text.strip() == title)
    tab.click()


def test_sample_compare_and_decay_tabs_in_chromium(server, browser, models, tmp_path):
    from sdt_gen.demo import DemoModel

    driver = browser
    driver.get(server)
    WebDriverWait(driver, 60).until(ready.element_to_be_clickable((By.ID, "generate")))
    model = DemoModel.load(models[0], device="cpu")
    second = model.class_names[1]

    # Sample: the class picked by name, Generate, and the grid the pipeline itself makes for those settings.
    choose_class(driver, "sample-classes", second)
    driver.find_element(By.ID, "generate").click()
    grid, _ = image_in(driver, "samples")
    expected = model.sample([model.class_names[0], second], per_class=4, guidance_scale=4.0, steps=25, seed=0).grid
    assert grid.size == expected.size
    assert np.asarray(grid).std() > 0, "a blank image"
    assert np.array_equal(np.asarray(grid), np.asarray(expected.convert("RGB")))
    screenshot(driver, "demo_sample.png", tmp_path)

    # Decay: the picked sample appears; the centre button and a click on the sample both draw maps.
    open_tab(driver, "Decay")
    image_in(driver, "decay-picked")
    driver.find_element(By.ID, "decay-show").click()
    maps, src = image_in(driver, "decay-maps")
    assert np.asarray(maps).std() > 0
    picked = driver.find_element(By.CSS_SELECTOR, "#decay-picked img")
    webdriver.ActionChains(driver).move_to_element_with_offset(picked, -picked.size["width"] // 3,
                                                               -picked.size["height"] // 3).click().perform()
    corner_maps, _ = image_in(driver, "decay-maps", previous=src)
    assert corner_maps.size == maps.size and not np.array_equal(np.asarray(corner_maps), np.asarray(maps))
    screenshot(driver, "demo_decay.png", tmp_path)

    # Compare: two grids, the same classes and seeds through both pipelines.
    open_tab(driver, "Compare")
    choose_class(driver, "compare-classes", second)
    driver.find_element(By.ID, "compare-button").click()
    left, _ = image_in(driver, "left")
    right, _ = image_in(driver, "right")
    assert left.size == right.size == grid.size
    assert np.array_equal(np.asarray(left), np.asarray(grid))  # the first pipeline, the same seeds
    assert not np.array_equal(np.asarray(left), np.asarray(right))
    screenshot(driver, "demo_compare.png", tmp_path)


def test_a_none_model_says_there_is_no_decay(browser, tmp_path):
    folder = tmp_path / "none"
    tiny_pipeline("none").save_pretrained(folder)
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "sdt_gen.demo", "--model", str(folder), "--port", str(port),
                                "--device", "cpu"], env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "the demo did not start"
                time.sleep(0.5)
        browser.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(browser, 60).until(ready.element_to_be_clickable((By.ID, "generate")))
        open_tab(browser, "Decay")
        message = WebDriverWait(browser, 30).until(ready.visibility_of_element_located((By.ID, "no-decay")))
        assert "no spatial decay to show" in message.text
        assert not [b for b in browser.find_elements(By.CSS_SELECTOR, "button[role='tab']") if b.text == "Compare"]
    finally:
        process.terminate()
        process.wait(timeout=30)
