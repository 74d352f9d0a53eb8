"""AI Service 2: document analysis backed by Elasticsearch."""
import argparse
import os

import httpx
import uvicorn
from fastapi import FastAPI, HTTPException

VERSION = "1.4.0"
app = FastAPI(title="ai-service-2", version=VERSION)
ES = os.environ.get("ELASTICSEARCH_URL", "http://127.0.0.1:9200")


@app.get("/health")
def health():
    return {"status": "ok", "version": VERSION}


@app.post("/api/v1/analyze")
async def analyze(doc: dict):
    text = str(doc.get("text", ""))
    async with httpx.AsyncClient(timeout=5) as client:
        r = await client.post(ES + "/_analyze", json={"analyzer": "standard", "text": text})
    if r.status_code != 200:
        raise HTTPException(502, "elasticsearch: %d" % r.status_code)
    tokens = [t["token"] for t in r.json().get("tokens", [])]
    return {"tokens": tokens, "count": len(tokens)}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8110)
    uvicorn.run(app, host="0.0.0.0", port=p.parse_args().port)
