"""MONAI Label app of the COVID-19 CT cGAN bundle.

Start it (the server binds 127.0.0.1 unless told otherwise; see ``bundle/monailabel/start_server.sh``)::

    bundle/monailabel/start_server.sh --studies <folder of images> [--conf key value ...]

Tasks:

- infer ``lesion_segmentation``: label map (lung, GGO, consolidation) for the radiologist to edit;
- infer ``synthesis``: the image's (edited) label map -> synthetic CT, added to the datastore as
  a new image whose final label is that map;
- train ``synthesis``: the bundle's GAN training (``train.yaml``) on the datastore's labelled images.

``--conf`` keys: see :mod:`lib.settings`.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

# the bundle's package from this checkout (custom/covid_ct_cgan), ahead of any installed copy
_CUSTOM = str(Path(__file__).resolve().parents[3] / "custom")
if _CUSTOM not in sys.path:
    sys.path.insert(0, _CUSTOM)

from fastapi import HTTPException  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.exception import MONAILabelException  # noqa: E402
from monailabel.interfaces.tasks.infer_v2 import InferTask  # noqa: E402
from monailabel.interfaces.tasks.train import TrainTask  # noqa: E402

from covid_ct_cgan.errors import InputError  # noqa: E402
from lib.infers import LesionSegmentation, Synthesis  # noqa: E402
from lib.infers.lesion_segmentation import LABELS  # noqa: E402
from lib.settings import BUNDLE_DIR, app_settings  # noqa: E402
from lib.trainers import SynthesisTraining  # noqa: E402

logger = logging.getLogger(__name__)


class MyApp(MONAILabelApp):
    """The bundle's tasks behind MONAI Label's REST API (3D Slicer, OHIF, curl).

    Errors reach the client with their reason: bad input (a missing label map or checkpoint, an
    unreadable file) as HTTP 400, anything else as HTTP 500, each with ``detail`` saying what failed
    (MONAI Label itself would answer a bare 500 and keep the reason in the server log).
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.settings = app_settings(conf)
        with open(BUNDLE_DIR / "configs" / "metadata.json", encoding="utf-8") as f:
            version = json.load(f).get("version", "0")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="covid_ct_cgan",
            description="COVID-19 chest CT: lesion pre-annotation and synthesis from edited label maps",
            version=version,
            labels=LABELS,
        )

    def init_infers(self) -> dict[str, InferTask]:
        return {
            "lesion_segmentation": LesionSegmentation(self.settings),
            "synthesis": Synthesis(self.datastore(), self.settings),
        }

    def init_trainers(self) -> dict[str, TrainTask]:
        return {"synthesis": SynthesisTraining(self.settings)}

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        """Run an infer task; the task also gets the image's datastore id, and errors carry their reason."""
        request = dict(request)
        if isinstance(request.get("image"), str):
            request.setdefault("image_id", request["image"])
        if request.get("model") == "synthesis":
            request["save_label"] = False  # its result is an image, stored by the task itself
        try:
            return super().infer(request, datastore)
        except HTTPException:
            raise
        except (InputError, MONAILabelException) as err:
            logger.error(f"infer {request.get('model')}: {err}")
            raise HTTPException(status_code=400, detail=f"{request.get('model')}: {err}") from err
        except Exception as err:
            logger.exception(f"infer {request.get('model')} failed")
            raise HTTPException(status_code=500, detail=f"{request.get('model')}: {type(err).__name__}: {err}") from err
