"""A real MONAI Label server with the bundle's app: upload, pre-annotate, synthesise, over REST.

Needs the separate MONAI Label environment (``bash bundle/monailabel/setup_env.sh``; location
``$MONAILABEL_VENV``, default ``/work/monailabel-venv``) and skips without it. Run it alone with::

    python -m pytest -m monailabel tests/monailabel -q
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sample_files

from covid_ct_cgan.checkpoint_settings import network_record
from covid_ct_cgan.inference import ModelGrid
from covid_ct_cgan.intensity import to_model
from covid_ct_cgan.networks import GlobalLocalGenerator

pytestmark = [pytest.mark.monailabel, pytest.mark.integration]  # a server in a subprocess

VENV = Path(os.environ.get("MONAILABEL_VENV", "/work/monailabel-venv"))
VENV_PYTHON = VENV / "bin" / "python"
AFFINE = np.diag([-0.7, -0.8, 2.5, 1.0])  # LPS data in nibabel's RAS world, as the prepared slices
GAN = dict(ngf=8, n_downsampling=1, n_blocks_global=1, n_blocks_local=1)
IMAGE_SIZE = 32  # the generator's and the UNet's grid in this test
START_TIMEOUT_S = 900.0  # only against a server that never comes up: the wait ends when /info/ answers
REQUEST_TIMEOUT_S = 120.0
TRAIN_TIMEOUT_S = 300.0


# --------------------------------------------------------------------------- data and checkpoints


def save_nifti(array: np.ndarray, path: Path) -> Path:
    img = nib.Nifti1Image(array, AFFINE)
    img.header.set_data_dtype(array.dtype)
    nib.save(img, str(path))
    return path


def model_grid(hu: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The slice on the models' grid, as the app puts it there: ``(1, 1, S, S)`` image in [-1, 1], ``(1, S, S)`` label map."""
    image, lab = ModelGrid(IMAGE_SIZE).to_grid(to_model(hu.astype(np.float32), "hu"), label)
    return image[None].float(), lab


def fitted_generator(hu: np.ndarray, label: np.ndarray, steps: int = 15) -> dict[str, Any]:
    """A tiny generator fitted (L1) to the test slice, saved as training saves its best generator (the weights and
    the record of the network and the data it was trained on): a trained checkpoint in seconds."""
    torch.manual_seed(0)
    net = GlobalLocalGenerator(4, 1, mode="joint", **GAN)
    real, lab = model_grid(hu, label)
    cond = F.one_hot(lab, 4).permute(0, 3, 1, 2).float()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(steps):
        opt.zero_grad()
        F.l1_loss(net(cond), real).backward()
        opt.step()
    data = {"image_size": IMAGE_SIZE, "crop_size": 0, "condition": "map", "context_region": "lung",
            "context_dilation": 3, "keep_effusion": False, "window_level": -600, "window_width": 1500}
    return {"generator": net.state_dict(), "network_settings": network_record(data, {"generator": net})}


def fitted_unet(hu: np.ndarray, label: np.ndarray, steps: int = 100) -> dict[str, torch.Tensor]:
    """segmentation.yaml's UNet fitted (cross-entropy) to the test slice's lesions (background, GGO, consolidation)."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
    image, lab = model_grid(hu, label)
    target = (lab - 1).clamp(0, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(image), target).backward()
        opt.step()
    return net.state_dict()


# --------------------------------------------------------------------------- REST helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(method: str, url: str, files: dict[str, Path] | None = None, fields: dict[str, str] | None = None,
         json_body: dict | None = None, timeout: float = REQUEST_TIMEOUT_S) -> tuple[int, bytes]:
    """One HTTP request (multipart form with ``files`` / ``fields``, or a JSON body); returns ``(status, body)``."""
    data, headers = None, {}
    if json_body is not None:
        data, headers = json.dumps(json_body).encode(), {"Content-Type": "application/json"}
    if files or fields:
        boundary = uuid.uuid4().hex
        parts = []
        for name, value in (fields or {}).items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        for name, path in (files or {}).items():
            head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n'
                    "Content-Type: application/octet-stream\r\n\r\n")
            parts.append(head.encode() + path.read_bytes() + b"\r\n")
        data = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def load_nifti_bytes(body: bytes, path: Path) -> nib.Nifti1Image:
    path.write_bytes(body)
    return nib.load(str(path))


# --------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, repo_root: Path):
    """A MONAI Label server on 127.0.0.1 with tiny fitted checkpoints; yields ``(base url, workspace)``."""
    if not VENV_PYTHON.is_file():
        message = f"needs the MONAI Label venv at {VENV}: create it with `bash bundle/monailabel/setup_env.sh`"
        if os.environ.get("REQUIRE_MONAILABEL") == "1":  # CI builds the venv: a missing one is a failure
            pytest.fail(message)
        pytest.skip(message)
    work = tmp_path_factory.mktemp("monailabel")
    chest = sample_files.chest_slice(64, 56)  # body, two lungs, GGO left, consolidation right
    hu, label = chest.hu, chest.label
    save_nifti(hu, work / "case1.nii.gz")
    save_nifti(label, work / "case1_label.nii.gz")
    save_nifti(hu, work / "case2.nii.gz")
    (work / "output" / "joint").mkdir(parents=True)  # as a training run leaves it: its best generator
    torch.save(fitted_generator(hu, label), work / "output" / "joint" / "best_generator.pt")
    torch.save(fitted_unet(hu, label), work / "unet.pt")  # a bare state dict, as CheckpointSaver writes unet.pt

    port = free_port()
    conf = {"checkpoint_dir": work / "output", "segmentation_checkpoint": work / "unet.pt", "work_dir": work / "app",
            "image_size": IMAGE_SIZE, "segmentation_image_size": IMAGE_SIZE, **GAN}
    command = [str(repo_root / "bundle" / "monailabel" / "start_server.sh"), "--studies", str(work / "studies"),
               "--port", str(port)]
    for key, value in conf.items():
        command += ["--conf", key, str(value)]
    env = {**os.environ, "MONAILABEL_VENV": str(VENV), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = open(work / "server.log", "wb")
    process = subprocess.Popen(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{(work / 'server.log').read_text()[-3000:]}")
            try:
                status, _ = call("GET", f"{base}/info/", timeout=5)
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not up after {START_TIMEOUT_S:.0f} s:\n{(work / 'server.log').read_text()[-3000:]}")
            time.sleep(1.0)
        yield base, work
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def test_round_trip_over_rest(server: tuple[str, Path]) -> None:
    base, work = server
    hu = nib.load(str(work / "case1.nii.gz"))
    label = np.asarray(nib.load(str(work / "case1_label.nii.gz")).dataobj)

    # the app and its tasks, as a client sees them
    status, body = call("GET", f"{base}/info/")
    info = json.loads(body)
    assert status == 200
    assert {"lesion_segmentation", "synthesis"} <= set(info["models"])
    assert "synthesis" in info["trainers"]
    assert info["models"]["lesion_segmentation"]["labels"] == {"lung": 1, "ggo": 2, "consolidation": 3}

    # upload an image and its label map
    status, body = call("PUT", f"{base}/datastore/image?image=case1", files={"file": work / "case1.nii.gz"})
    assert status == 200 and json.loads(body)["image"] == "case1"
    status, body = call("PUT", f"{base}/datastore/label?image=case1&tag=final",
                        files={"label": work / "case1_label.nii.gz"})
    assert status == 200, body

    # pre-annotation: a label map on the image's own grid, classes of the label map only
    status, body = call("POST", f"{base}/infer/lesion_segmentation?image=case1&output=image", fields={"params": "{}"})
    assert status == 200, body
    seg = load_nifti_bytes(body, work / "seg.nii.gz")
    seg_data = np.asarray(seg.dataobj)
    assert seg_data.shape == label.shape
    assert set(np.unique(seg_data).tolist()) <= {0, 1, 2, 3}
    for code in (2, 3):  # the fitted UNet finds the slice's GGO and consolidation
        assert np.count_nonzero((seg_data == code) & (label == code)) > 0.5 * np.count_nonzero(label == code)
    assert np.count_nonzero((seg_data > 0) & (label > 0)) > 0.8 * np.count_nonzero(label > 0)  # lung: derived
    assert np.allclose(seg.affine, hu.affine) and np.allclose(seg.header.get_zooms()[:2], (0.7, 0.8))

    # synthesis: a new datastore image whose label is the map used
    status, body = call("POST", f"{base}/infer/synthesis?image=case1&output=json", fields={"params": "{}"})
    assert status == 200, body
    result = json.loads(body)
    new_id = result["image"]
    assert new_id.startswith("case1_synthetic_") and result["source_image"] == "case1"
    status, body = call("GET", f"{base}/datastore/image?image={new_id}")
    assert status == 200
    synthetic = load_nifti_bytes(body, work / "synthetic.nii.gz")
    real, fake = np.asarray(hu.dataobj), np.asarray(synthetic.dataobj)
    assert fake.shape == real.shape and fake.dtype == real.dtype
    assert np.allclose(synthetic.affine, hu.affine)
    lung = label > 0
    assert np.array_equal(fake[~lung], real[~lung])  # outside the lung: the input, bit for bit
    assert np.mean(fake[lung] != real[lung]) > 0.5  # inside: generated
    status, body = call("GET", f"{base}/datastore/label?label={new_id}&tag=final")
    assert status == 200
    assert np.array_equal(np.asarray(load_nifti_bytes(body, work / "synthetic_label.nii.gz").dataobj), label)
    status, body = call("GET", f"{base}/datastore/image/info?image={new_id}")
    assert json.loads(body)["synthetic"] is True


def test_errors_carry_their_reason(server: tuple[str, Path]) -> None:
    base, work = server
    status, _ = call("PUT", f"{base}/datastore/image?image=case2", files={"file": work / "case2.nii.gz"})
    assert status == 200
    status, body = call("POST", f"{base}/infer/synthesis?image=case2&output=json", fields={"params": "{}"})
    assert status == 400
    assert "no label map" in json.loads(body)["detail"]


@pytest.mark.slow
def test_training_runs_the_bundle_stages(server: tuple[str, Path]) -> None:
    """POST /train/synthesis: train.yaml's `run` once per stage on the datastore's real labelled images."""
    base, work = server
    for path, files in (("image?image=case1", {"file": work / "case1.nii.gz"}),
                        ("label?image=case1&tag=final", {"label": work / "case1_label.nii.gz"})):
        assert call("PUT", f"{base}/datastore/{path}", files=files)[0] == 200
    status, body = call("POST", f"{base}/train/synthesis", json_body={"max_epochs": 1})
    assert status == 200, body
    task_id, task = json.loads(body)["id"], {}
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        status, body = call("GET", f"{base}/train/?all=true")
        task = next((t for t in json.loads(body) if t.get("id") == task_id), {}) if status == 200 else {}
        if task.get("status") in ("DONE", "ERROR"):
            break
        time.sleep(2.0)
    assert task.get("status") == "DONE", json.dumps(task, indent=1)
    for stage in ("global", "local", "joint"):
        assert (work / "output" / stage / "checkpoint_epoch=1.pt").is_file()
    slices = sorted(p.name for p in (work / "app" / "train_data" / "training" / "images").iterdir())
    assert slices == ["case1_0000.nii.gz"]  # case1 only: case2 has no label map, the synthetic image is left out

    # the synthesis now serves the trained joint stage
    status, body = call("POST", f"{base}/infer/synthesis?image=case1&output=json", fields={"params": "{}"})
    assert status == 200, body
    assert json.loads(body)["settings"]["checkpoint"] == str(work / "output" / "joint" / "checkpoint_epoch=1.pt")
