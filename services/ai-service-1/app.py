"""AI Service 1: semantic search over Weaviate."""
import argparse
import os

import httpx
import uvicorn
from fastapi import FastAPI, HTTPException

VERSION = "2.3.1"
app = FastAPI(title="ai-service-1", version=VERSION)
WEAVIATE = os.environ.get("WEAVIATE_URL", "http://127.0.0.1:8080")


@app.get("/health")
def health():
    return {"status": "ok", "version": VERSION}


@app.get("/api/v1/search")
async def search(q: str, limit: int = 10):
    query = {"query": "{ Get { Document(limit: %d, bm25: {query: %r}) { title } } }" % (limit, q)}
    headers = {"Authorization": "Bearer " + os.environ.get("WEAVIATE_API_KEY", "")}
    async with httpx.AsyncClient(timeout=5) as client:
        r = await client.post(WEAVIATE + "/v1/graphql", json=query, headers=headers)
    if r.status_code != 200:
        raise HTTPException(502, "weaviate: %d" % r.status_code)
    return r.json()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8100)
    uvicorn.run(app, host="0.0.0.0", port=p.parse_args().port)
