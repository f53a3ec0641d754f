"""The Python service imgclass replaces: FastAPI + PyTorch eager + PIL preprocessing, one worker.

    MODEL=mobilenet_v3_large TORCH_THREADS=2 gunicorn -w 1 -k uvicorn.workers.UvicornWorker \
        --chdir scripts/bench baseline_app:app --bind 127.0.0.1:9000

POST /classify with the raw image bytes (Content-Type image/*) -> top-5 JSON. Random weights
(torchvision's initialisation; timing does not depend on the values). Used by server_compare.sh.
Needs: pip install torch torchvision fastapi uvicorn gunicorn pillow
"""

import io
import os

import torch
import torchvision
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from torchvision import transforms

torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
MODEL = os.environ.get("MODEL", "mobilenet_v3_large")
net = getattr(torchvision.models, MODEL)(weights=None).eval()
# torchvision's IMAGENET1K_V2 eval transform.
preprocess = transforms.Compose([
    transforms.Resize(232),
    transforms.CenterCrop(224),
    transforms.ToTensor(),
    transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
])
app = FastAPI()


def predict(body: bytes) -> dict:
    try:
        img = Image.open(io.BytesIO(body)).convert("RGB")
    except Exception as e:  # noqa: BLE001 - any decoding failure is the client's
        raise HTTPException(status_code=400, detail=f"not an image: {e}") from e
    x = preprocess(img).unsqueeze(0)
    with torch.inference_mode():
        p = net(x).softmax(-1)[0]
    top = p.topk(5)
    return {"model": MODEL, "predictions": [
        {"index": int(i), "score": float(s)} for s, i in zip(top.values, top.indices)]}


@app.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@app.post("/classify")
async def classify(request: Request) -> dict:
    body = await request.body()
    return await run_in_threadpool(predict, body)
