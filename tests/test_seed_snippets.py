"""The Python examples of Roboflow Inference's own guides to its HTTP API (the inference-sdk quickstart
and the v1/v2 route guide that users migrating to the device know) run against the device.

Each snippet below is Roboflow's text with only what points at Roboflow changed: the model id
(``soccer-players-5fuqs/1`` -> ``shapes/1``), the server (``localhost:9001`` and
``https://detect.roboflow.com`` -> the test's daemon on loopback), the image (Roboflow's soccer.jpg
URL -> the same kind of URL on a loopback server; ``path/to/local/image.jpg`` -> the bundled sample),
the API key's environment variable, and one syntax error of the original (a trailing comma after an
import). They run in a subprocess, as a user's script would, and print their answer as JSON for the
test to check. Seed 004's v1 JSON body has its own test in test_v1_json.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import serve_folder
from servers import Server, running_server

SAMPLE = Path(__file__).resolve().parent.parent / "edge_agent" / "demo" / "sample.jpg"
LOOSE_URLS = {"allow_http_urls": "true", "allow_urls_without_fqdn": "true", "allow_non_global_urls": "true"}

SDK_URL = '''
from inference_sdk import InferenceHTTPClient, InferenceConfiguration

project_id = "shapes"
model_version = "1"
model_id = project_id + "/" + model_version
image_url = "IMAGE_URL"

client = InferenceHTTPClient(
    api_url="http://localhost:9001",
    api_key=os.environ["ROBOFLOW_API_KEY"],
)


results = client.infer(image_url, model_id=model_id)
'''

SDK_SUPERVISION = '''
import os

import cv2
import supervision as sv
from inference_sdk import InferenceHTTPClient, InferenceConfiguration

model_id = "shapes/1"
image_file = "soccer.jpg"

image = cv2.imread(image_file)

#Configure client
client = InferenceHTTPClient(
    api_url="https://detect.roboflow.com", # route for local inference server
    api_key=os.environ["ROBOFLOW_API_KEY"], # api key for your workspace
)

#Run inference
result = client.infer(image, model_id=model_id)

#Load results into Supervision Detection API
detections = sv.Detections.from_inference(result)

#Create Supervision annotators
bounding_box_annotator = sv.BoxAnnotator()
label_annotator = sv.LabelAnnotator()

#Extract labels array from inference results
labels = [p['class'] for p in result['predictions']]

#Apply results to image using Supervision annotators
annotated_image = bounding_box_annotator.annotate(scene=image, detections=detections)
annotated_image = label_annotator.annotate(
    scene=annotated_image, detections=detections, labels=labels
)

#Write annotated image to file or display image
with sv.ImageSink(target_dir_path="./results/", overwrite=True) as sink:
    sink.save_image(annotated_image)
#or sv.plot_image(annotated_image)
results = {"labels": labels, "detections": len(detections)}
'''

SDK_HOSTED = '''
from inference_sdk import InferenceHTTPClient, InferenceConfiguration

project_id = "shapes/1"
image_url = "IMAGE_URL"

client = InferenceHTTPClient(
    api_url="https://detect.roboflow.com",
    api_key=os.environ["ROBOFLOW_API_KEY"],
)

results = client.infer(image_url, model_id=f"{project_id}")
'''

SDK_URL_PRINT = '''
# import client from inference_sdk
from inference_sdk import InferenceHTTPClient
# import os to get the API_KEY from the environment
import os

# set the project_id, model_version, image_url
project_id = "shapes"
model_version = 1
image_url = "IMAGE_URL"

# create a client object
client = InferenceHTTPClient(
    api_url="http://localhost:9001",
    api_key=os.environ["API_KEY"],
)

# run inference on the image
results = client.infer(image_url, model_id=f"{project_id}/{model_version}")

# print the results
print(results)
'''

SDK_PIL = '''
# import client from inference sdk
from inference_sdk import InferenceHTTPClient
# import PIL for loading image
from PIL import Image
# import os for getting api key from environment
import os

# set the project_id, model_version, image_url
project_id = "shapes"
model_version = 1
filename = "SAMPLE"

# create a client object
client = InferenceHTTPClient(
    api_url="http://localhost:9001",
    api_key=os.environ["API_KEY"],
)

# load the image
pil_image = Image.open(filename)

# run inference
results = client.infer(pil_image, model_id=f"{project_id}/{model_version}")

print(results)
'''

SDK_NUMPY = '''
# import client from inference-sdk
from inference_sdk import InferenceHTTPClient
# import opencv for image loading
import cv2
# import os to read api key from environment
import os

# set the project_id, model_version, image_url
project_id = "shapes"
model_version = 1
filename = "SAMPLE"

# create client
client = InferenceHTTPClient(
    api_url="http://localhost:9001",
    api_key=os.environ["API_KEY"],
)

# load image with opencv
numpy_image = cv2.imread(filename)

# run inference
results = client.infer(numpy_image, model_id=f"{project_id}/{model_version}")

print(results)
'''

V2_BATCH = '''
import requests
import base64
from PIL import Image
from io import BytesIO

project_id = "shapes"
model_version = 1
task = "object_detection"
confidence = 0.5
iou_thresh = 0.5
api_key = "YOUR ROBOFLOW API KEY"
file_name = "SAMPLE"

image = Image.open(file_name)

buffered = BytesIO()

image.save(buffered, quality=100, format="JPEG")

img_str = base64.b64encode(buffered.getvalue())
img_str = img_str.decode("ascii")

infer_payload = {
    "model_id": f"{project_id}/{model_version}",
    "image": [
        {
            "type": "base64",
            "value": img_str,
        },
        {
            "type": "base64",
            "value": img_str,
        },
        {
            "type": "base64",
            "value": img_str,
        }
    ],
    "confidence": confidence,
    "iou_threshold": iou_thresh,
    "api_key": api_key,
}

res = requests.post(
    f"http://localhost:9001/infer/{task}",
    json=infer_payload,
)

predictions = res.json()
print(predictions)
results = predictions
'''

V1_URL = '''
import requests
import base64
from PIL import Image
from io import BytesIO

project_id = "shapes"
model_version = 1
confidence = 0.5
iou_thresh = 0.5
api_key = "YOUR ROBOFLOW API KEY"
image_url = "IMAGE_URL"


res = requests.post(
    f"https://detect.roboflow.com/{project_id}/{model_version}?api_key={api_key}&confidence={confidence}&overlap={iou_thresh}&image={image_url}",
)

predictions = res.json()
print(predictions)
results = predictions
'''

V1_BASE64 = '''
import requests
import base64
from PIL import Image
from io import BytesIO

project_id = "shapes"
model_version = 1
confidence = 0.5
iou_thresh = 0.5
api_key = "YOUR ROBOFLOW API KEY"
file_name = "SAMPLE"

image = Image.open(file_name)

buffered = BytesIO()

image.save(buffered, quality=100, format="JPEG")

img_str = base64.b64encode(buffered.getvalue())
img_str = img_str.decode("ascii")

res = requests.post(
    f"https://detect.roboflow.com/{project_id}/{model_version}?api_key={api_key}&confidence={confidence}&overlap={iou_thresh}",
    data=img_str,
    headers={"Content-Type": "application/json"},
)

predictions = res.json()
print(predictions)
results = predictions
'''

V1_PICKLE = '''
import requests
import cv2
import pickle

project_id = "shapes"
model_version = 1
task = "object_detection"
api_key = "YOUR API KEY"
file_name = "SAMPLE"

image = cv2.imread(file_name)
numpy_data = pickle.dumps(image)

res = requests.post(
    f"http://localhost:9001/{project_id}/{model_version}?api_key={api_key}&image_type=numpy",
    data=numpy_data,
    headers={"Content-Type": "application/json"},
)

predictions = res.json()
print(predictions)
results = {"status": res.status_code, "body": predictions}
'''


@pytest.fixture(scope="module")
def image_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    www = tmp_path_factory.mktemp("www")
    (www / "soccer.jpg").write_bytes(SAMPLE.read_bytes())
    with serve_folder(www) as base:
        yield f"{base}/soccer.jpg"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = {**LOOSE_URLS, "allow_numpy": "true", "preload_models": "shapes/1"}
    with running_server(tmp_path_factory.mktemp("seeds"), settings) as found:
        yield found


def run_snippet(code: str, server: Server, image_url: str, cwd: Path) -> Any:
    """Run ``code`` (Roboflow's snippet, pointed at the device) as a script; returns its ``results``."""
    code = (code.replace("https://detect.roboflow.com", server.url).replace("http://localhost:9001", server.url)
            .replace("IMAGE_URL", image_url).replace("SAMPLE", str(SAMPLE)))
    script = "import os, json\n" + code + "\nprint('RESULTS=' + json.dumps(results, default=str))\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.update(ROBOFLOW_API_KEY="rf-test-key", API_KEY="rf-test-key", MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"{done.stderr[-3000:]}\n--- server\n{server.output()[-2000:]}"
    line = [s for s in done.stdout.splitlines() if s.startswith("RESULTS=")][-1]
    return json.loads(line[len("RESULTS="):])


def _detected(body: dict[str, Any]) -> list[str]:
    assert body["image"] == {"width": 640, "height": 480}, body
    return sorted(p["class"] for p in body["predictions"])


@pytest.mark.parametrize("snippet", [SDK_URL, SDK_HOSTED, SDK_URL_PRINT, SDK_PIL, SDK_NUMPY, V1_URL, V1_BASE64],
                         ids=["sdk-url", "sdk-hosted", "sdk-url-print", "sdk-pil", "sdk-numpy", "v1-url",
                              "v1-base64"])
def test_single_image_snippets(snippet: str, server: Server, image_url: str, tmp_path: Path) -> None:
    got = run_snippet(snippet, server, image_url, tmp_path)
    assert _detected(got), got  # the sample holds shapes the demo detector finds
    assert all(p["class"] in ("circle", "square", "triangle", "star") for p in got["predictions"])


def test_the_answers_agree_whatever_the_route(server: Server, image_url: str, tmp_path: Path) -> None:
    """The SDK (v2) and the v1 route see the same shapes in the same image (confidence 0.5 on v1 as
    the snippet asks; the SDK's default is the server's 0.4)."""
    v2 = _detected(run_snippet(SDK_URL, server, image_url, tmp_path))
    v1 = _detected(run_snippet(V1_URL, server, image_url, tmp_path))
    assert set(v1) <= set(v2)


def test_batch_of_three_on_v2(server: Server, image_url: str, tmp_path: Path) -> None:
    got = run_snippet(V2_BATCH, server, image_url, tmp_path)
    assert isinstance(got, list) and len(got) == 3
    assert _detected(got[0]) == _detected(got[1]) == _detected(got[2])
    assert len({body["inference_id"] for body in got}) == 1  # one request, one inference id


def test_supervision_snippet_writes_the_annotated_image(server: Server, image_url: str, tmp_path: Path) -> None:
    (tmp_path / "soccer.jpg").write_bytes(SAMPLE.read_bytes())
    got = run_snippet(SDK_SUPERVISION, server, image_url, tmp_path)
    assert got["detections"] == len(got["labels"]) > 0
    written = list((tmp_path / "results").iterdir())
    assert len(written) == 1 and written[0].stat().st_size > 10_000


def test_pickled_numpy_is_refused_with_the_reason(server: Server, image_url: str, tmp_path: Path) -> None:
    """The guide's last snippet posts ``pickle.dumps(image)``. Unpickling what a network client sends
    runs its code, so the device refuses it, naming what it takes instead (docs/http-api.md §9.2)."""
    got = run_snippet(V1_PICKLE, server, image_url, tmp_path)
    assert got["status"] == 400, got
    assert "pickle" in got["body"]["message"].lower() or ".npy" in got["body"]["message"], got
