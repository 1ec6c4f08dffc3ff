"""What a person sees: headless Chromium (Debian's `chromium`) loads the Prefect UI page of an
install run on the persistent server; the screenshot, read back by OCR (tesseract), shows the
eight phase subflows. Not in the default suite (it needs chromium and tesseract-ocr): run it
with `./dev test-ui`, which installs both when missing."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.conftest import new_sandbox_root
from tests.service.conftest import Service

pytestmark = [pytest.mark.integration, pytest.mark.ui]


def test_the_install_run_page_shows_the_eight_phase_subflows():
    chromium, tesseract = shutil.which("chromium"), shutil.which("tesseract")
    assert chromium and tesseract, "needs Debian's chromium and tesseract-ocr (./dev test-ui installs them)"
    folder = new_sandbox_root()
    ui = Service(folder, name="ui")
    try:
        ui.pcdb("server", "up", "--env", str(ui.spec))
        installed = ui.pcdb("install", "--env", str(ui.spec), "--deployed", "--json")
        run_url = re.search(r"run: (\S+)", installed.stderr).group(1)
        assert json.loads(installed.stdout)["status"] == "completed"
        shot = folder / "install-run.png"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--force-device-scale-factor=2", "--window-size=1600,1000", "--virtual-time-budget=20000",
                        f"--screenshot={shot}", run_url], capture_output=True, timeout=120, check=True)
        text = subprocess.run([tesseract, str(shot), "-"], capture_output=True, text=True, timeout=120, check=False).stdout
        seen = sorted(set(re.findall(r"Phase ([1-8])", text)))
        assert seen == [str(n) for n in range(1, 9)], f"phases seen in {shot}: {seen}\n{text}"
        print(f"screenshot: {shot}")
    finally:
        ui.pcdb("server", "down", "--env", str(ui.spec), check=False)
        ui.pcdb("sandbox", "destroy", "--env", str(ui.spec), "--yes", check=False)
