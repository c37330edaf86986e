"""`epir app` driven in a real headless Chromium (Selenium with Debian's chromium and chromium-driver): upload a
generated clip, get the predicted label and the explanation image. Skipped, with the reason, where Gradio,
Selenium or the browser is absent (`pip install "epir[app,browser]"`, `apt-get install chromium chromium-driver`).
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from epir.data.synthetic import make_clip, random_subject


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"epir app exited early: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"epir app did not answer at {url} within {seconds} s")


def write_clip(path: Path) -> Path:
    import cv2

    rng = np.random.default_rng(7)
    frames = make_clip(random_subject(rng, 64), "positive", rng, n_frames=4)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def test_app_answers_an_uploaded_clip_in_the_browser(ckpt_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("gradio", reason='the demo needs Gradio: pip install "epir[app]"')
    webdriver = pytest.importorskip("selenium.webdriver", reason='the browser test needs pip install "epir[browser]"')
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if browser is None or driver_path is None:
        pytest.skip("no Chromium/ChromeDriver here: apt-get install chromium chromium-driver")
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = subprocess.Popen([sys.executable, "-m", "epir.cli", "app", "--checkpoint", str(ckpt_dir), "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    driver = None
    try:
        wait_for(url, proc)
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1800"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=webdriver.ChromeService(driver_path), options=options)
        driver.get(url)
        wait = WebDriverWait(driver, 90)
        clip = write_clip(tmp_path / "clip.avi")
        shown_video = "#video-input video"
        for _ in range(3):  # a file given before the page's scripts attach to the input is dropped: give it again
            upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#video-input input[type=file]")))
            upload.send_keys(str(clip))
            try:
                WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, shown_video))
                break
            except TimeoutException:
                continue
        classes = ("negative", "positive", "surprise")
        for _ in range(3):  # on a loaded machine the answer can take long: ask again
            wait.until(ec.element_to_be_clickable((By.ID, "predict-button"))).click()
            try:
                WebDriverWait(driver, 45).until(
                    lambda d: any(c in d.find_element(By.ID, "prediction").text for c in classes))
                break
            except TimeoutException:
                continue
        else:
            shown = driver.find_element(By.ID, "prediction").text
            has_video = bool(driver.find_elements(By.CSS_SELECTOR, shown_video))
            proc.terminate()
            log = proc.communicate(timeout=30)[0][-3000:]
            raise AssertionError(f"the app gave no prediction after three clicks of predict-button; it shows "
                                 f"{shown!r}; the uploaded video {'is' if has_video else 'is not'} shown; the app's "
                                 f"last output:\n{log}")
        img = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#explanation img"))
        assert img.get_attribute("src")
        wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", img) > 100)
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        proc.wait(timeout=30)


def test_app_needs_gradio_or_says_how(monkeypatch, ckpt_dir: Path, capsys) -> None:
    import builtins

    from epir.cli import main

    real_import = builtins.__import__

    def no_gradio(name, *args, **kwargs):
        if name == "gradio":
            raise ImportError("No module named 'gradio'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gradio)
    assert main(["app", "--checkpoint", str(ckpt_dir), "--port", "1"]) == 2
    assert "epir[app]" in capsys.readouterr().err
