"""LoomaCRM: customer records, enriched by the AI services."""
import argparse
import os

import httpx
import uvicorn
from fastapi import FastAPI

VERSION = "0.9.2"
app = FastAPI(title="looma-crm", version=VERSION)
UPSTREAMS = {
    "auth": os.environ.get("AUTH_URL", "http://127.0.0.1:8207"),
    "ai-service-1": os.environ.get("AI_SERVICE_1_URL", "http://127.0.0.1:8100"),
    "ai-service-2": os.environ.get("AI_SERVICE_2_URL", "http://127.0.0.1:8110"),
}


@app.get("/health")
def health():
    return {"status": "ok", "version": VERSION}


@app.get("/api/v1/upstreams")
async def upstreams():
    out = {}
    async with httpx.AsyncClient(timeout=3) as client:
        for name, url in UPSTREAMS.items():
            try:
                out[name] = (await client.get(url + "/health")).status_code == 200
            except httpx.HTTPError:
                out[name] = False
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8700)
    uvicorn.run(app, host="0.0.0.0", port=p.parse_args().port)
