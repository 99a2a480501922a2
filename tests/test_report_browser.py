"""The HTML report in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`), no network.

Fails on any console message of level SEVERE and on any request other than the page itself and
``data:`` URIs; toggles a layer, clicks a field and checks its popup, and checks that a screenshot
of the map is not blank.
"""

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from cropseg.report import build_report

CHROMIUM = Path(os.environ.get("CROPSEG_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CROPSEG_CHROMEDRIVER", "/usr/bin/chromedriver"))
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--disable-default-apps",
    "--window-size=1280,1000",
)

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent: apt-get install chromium chromium-driver"),
    pytest.mark.skipif(not CHROMEDRIVER.exists(), reason=f"{CHROMEDRIVER} is absent: apt-get install chromium-driver"),
]


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    drv = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    yield drv
    drv.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from test_report import make_run

    run = make_run(tmp_path_factory.mktemp("browser") / "run")
    return build_report(run, n_disagreements=1)


def _wait(drv, script, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = drv.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")


def _requests(drv, page_url):
    """Requests the page made (performance log), and those that failed."""
    made, failed = [], []
    for entry in drv.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        params = msg.get("params", {})
        if msg["method"] == "Network.requestWillBeSent" and params.get("documentURL") == page_url:
            made.append(params["request"]["url"])
        if msg["method"] == "Network.loadingFailed":
            failed.append(params)
    return made, failed


def test_report_in_headless_chromium(driver, report, tmp_path):
    from matplotlib.image import imread
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    url = report.resolve().as_uri()
    driver.get("about:blank")
    driver.get_log("browser")  # drop what the browser logged before the page
    driver.get_log("performance")
    driver.get(url)
    _wait(driver, "return window.cropsegReady === true")

    # the layers that start visible are drawn
    assert len(driver.find_elements(By.CSS_SELECTOR, "#map img.leaflet-image-layer")) == 1  # the image
    assert driver.find_elements(By.CSS_SELECTOR, "#map path.cs-fields")

    # toggle a layer: tick "Prediction" in the layer control
    label = next(e for e in driver.find_elements(By.CSS_SELECTOR, ".leaflet-control-layers-overlays label")
                 if e.text.strip() == "Prediction")
    label.click()
    _wait(driver, "return window.cropsegMap.hasLayer(window.cropsegLayers['Prediction'])")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#map img.leaflet-image-layer")) == 2
    label.click()
    _wait(driver, "return !window.cropsegMap.hasLayer(window.cropsegLayers['Prediction'])")

    # click field 2 (a crop field, not a change) where it lies on screen
    x, y = driver.execute_script(
        """
        var layer = null;
        window.cropsegLayers['Fields: share predicted crop'].eachLayer(function (l) {
          if (l.feature.properties.field_id === 2) layer = l;
        });
        var ll = layer.getBounds();
        var lat = ll.getSouth() + 0.25 * (ll.getNorth() - ll.getSouth());  // inside its lower part
        var lng = ll.getWest() + 0.5 * (ll.getEast() - ll.getWest());
        var p = window.cropsegMap.latLngToContainerPoint([lat, lng]);
        return [p.x, p.y];
        """
    )
    map_el = driver.find_element(By.ID, "map")
    size = map_el.size
    ActionChains(driver).move_to_element_with_offset(
        map_el, int(x - size["width"] / 2), int(y - size["height"] / 2)
    ).click().perform()
    popup = _wait(driver, "var p = document.querySelector('.leaflet-popup-content'); return p && p.innerText;")
    assert "Field 2" in popup and "share_pred_crop" in popup and "status" in popup

    time.sleep(0.5)  # let the popup fade in
    # a screenshot that is not blank
    shot = tmp_path / "report.png"
    assert map_el.screenshot(str(shot))
    img = imread(str(shot))[..., :3]
    assert img.shape[0] > 300 and img.shape[1] > 600
    assert img.std() > 0.05
    assert len({tuple(px) for px in (img.reshape(-1, 3)[::7] * 255).astype(int).tolist()}) > 50

    # no console error, no request but the page itself (everything else is inline or a data: URI)
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    made, failed = _requests(driver, url)
    assert failed == [], failed
    assert [u for u in made if not u.startswith("data:")] == [url]
