"""The run ledger's anchors on Azure: one blob per row in the evidence container, whose
time-based immutability policy (declared by the plan) keeps any blob from being changed or
deleted within the retention. The row hash rides in the blob's metadata, so one listing reads
every anchor."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from urllib.parse import quote

from pcdb.anchors import AnchorConflict, AnchorError

VERSION = "2023-11-03"


class BlobAnchors:
    """Anchors as blobs ``<prefix><seq, 12 digits>`` (metadata ``rowhash``), written with
    ``If-None-Match: *``: a second write of a row is refused by the service itself."""

    def __init__(self, client_factory, base: str, container: str, prefix: str, verify):
        self._client = client_factory
        self._base = base
        self._container = container
        self._prefix = prefix
        self._verify = verify
        self.where = f"{base}/{container}/{prefix}"

    def put(self, seq: int, row_hash: str) -> None:
        url = f"{self._base}/{self._container}/{quote(self._prefix)}{seq:012d}"
        headers = {"x-ms-version": VERSION, "x-ms-blob-type": "BlockBlob", "Content-Type": "text/plain",
                   "x-ms-meta-rowhash": row_hash, "If-None-Match": "*"}
        with self._client() as (client, HttpRequest):
            try:
                reply = client.send_request(HttpRequest("PUT", url, content=(row_hash + "\n").encode(),
                                                        headers=headers), connection_verify=self._verify)
            except Exception as exc:
                raise AnchorError(f"cannot write the ledger anchor {url}: {exc}") from exc
            if reply.status_code == 409:
                kept = self.read_one(client, HttpRequest, url)
                if kept != row_hash:
                    raise AnchorConflict(f"row {seq} of the ledger was anchored in {url} with hash "
                                         f"{(kept or '?')[:16]}…, not {row_hash[:16]}…: the chain was rewritten")
                return
            if reply.status_code >= 300:
                raise AnchorError(f"cannot write the ledger anchor {url}: HTTP {reply.status_code}")

    def read_one(self, client, HttpRequest, url: str) -> str | None:
        reply = client.send_request(HttpRequest("HEAD", url, headers={"x-ms-version": VERSION}),
                                    connection_verify=self._verify)
        return reply.headers.get("x-ms-meta-rowhash") if reply.status_code == 200 else None

    def read(self) -> dict[int, str]:
        out: dict[int, str] = {}
        marker = ""
        with self._client() as (client, HttpRequest):
            while True:
                url = (f"{self._base}/{self._container}?restype=container&comp=list&include=metadata"
                       f"&prefix={quote(self._prefix)}" + (f"&marker={quote(marker)}" if marker else ""))
                reply = client.send_request(HttpRequest("GET", url, headers={"x-ms-version": VERSION}),
                                            connection_verify=self._verify)
                if reply.status_code != 200:
                    raise AnchorError(f"cannot list the ledger anchors in {self.where}: HTTP {reply.status_code}")
                root = ElementTree.fromstring(reply.read())
                for blob in root.iter("Blob"):
                    name = blob.findtext("Name") or ""
                    seq = name.removeprefix(self._prefix)
                    digest = blob.findtext("Metadata/rowhash")
                    if seq.isdigit() and digest:
                        out[int(seq)] = digest
                marker = root.findtext("NextMarker") or ""
                if not marker:
                    return out
