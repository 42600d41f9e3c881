"""The review item view's pictures: the source frame (windowed), the heatmap, the given and the suggested mask.

PNG renderings of what the review store points at, with a small cache of decoded datasets (the item
view asks for several pictures of one item in a row). A picture that cannot be drawn is an
``HTTPException`` with the reason (404: nothing to draw; 422: the object cannot be drawn).
"""

from __future__ import annotations

import io
from collections import OrderedDict
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from fastapi import HTTPException
from fastapi.responses import Response
from PIL import Image
from pydicom.dataset import Dataset

from dicom_io.annotations.seg import seg_limit_issue
from dicom_io.pixels import PixelError, _modality_lut, _window, frame_to_float
from dicom_io.results.revision import RevisionError
from dicom_io.results.seg_out import pixels_on_source_frames
from service.review import ReviewService
from service.review.volume import VolumeItemError, is_volume_item, opening_slice, slice_source

__all__ = ["Pictures"]


class Pictures:
    """PNG renderings for the item view, with a small cache of decoded datasets."""

    def __init__(self, review: ReviewService, size: int = 32) -> None:
        self.review = review
        self._cache: OrderedDict[str, Dataset] = OrderedDict()
        self._size = size

    def dataset(self, uid: str | None) -> Dataset:
        """The stored object ``uid``, decoded (404 when it is not in the store)."""
        if not uid:
            raise HTTPException(404, "no such object")
        if uid in self._cache:
            self._cache.move_to_end(uid)
            return self._cache[uid]
        p = self.review.instance_path(uid)
        if p is None:
            raise HTTPException(404, f"object {uid} is not in the store")
        ds = pydicom.dcmread(p)
        self._cache[uid] = ds
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return ds

    @staticmethod
    def png(arr: np.ndarray) -> Response:
        """``arr`` (uint8, or floats in [0, 1]) as a PNG response the browser may keep for 5 minutes."""
        a = np.asarray(arr)
        if a.dtype != np.uint8:
            a = (np.clip(a, 0.0, 1.0) * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png", headers={"Cache-Control": "private, max-age=300"})

    def image(self, item: dict[str, Any], wc: float | None, ww: float | None) -> Response:
        """The item's source frame: windowed by ``wc``/``ww`` when both are given, else by its own VOI."""
        ds = self.dataset(item["image_uid"])
        try:
            if wc is not None and ww is not None and ww > 0:
                index = int(item["frame"] or 1) - 1
                arr = ds.pixel_array
                if arr.ndim == 3 and int(ds.get("SamplesPerPixel", 1) or 1) == 1:
                    arr = arr[index]
                out = _window(_modality_lut(np.asarray(arr), ds, index), wc, ww, "LINEAR")
            else:
                out = frame_to_float(ds, item["frame"])
        except PixelError as e:
            raise HTTPException(422, f"cannot show the image: {e}") from None
        return self.png(out)

    def heatmap(self, item: dict[str, Any]) -> Response:
        """The item's heatmap (the Secondary Capture as written)."""
        ds = self.dataset(item["heatmap_uid"])
        return self.png(ds.pixel_array)

    def mask(self, item: dict[str, Any]) -> Response:
        """The given SEG segment on the item's source frame: red, with a yellow outline."""
        if item["source"] != "seg" or not item["segment_number"]:
            raise HTTPException(404, "this annotation has no mask")
        ds = self.dataset(item["annotation_uid"])
        over = seg_limit_issue(ds, self.review.seg_limits)  # from the header: bounded time whatever the SEG
        if over:
            raise HTTPException(422, f"cannot draw the mask: the SEG is too large ({over})")
        try:
            seg = hd.seg.Segmentation.from_dataset(ds, copy=True)
            px = pixels_on_source_frames(seg, [(item["image_uid"], item["frame"])], [int(item["segment_number"])])
        except Exception as e:  # noqa: BLE001 - highdicom raises many kinds for SEGs it cannot draw
            raise HTTPException(422, f"cannot draw the mask: {type(e).__name__}: {e}"[:500]) from None
        return self.png(self.outline(px[0, ..., 0] > 0, (255, 40, 40, 110), (255, 220, 0, 255)))

    def suggestion(self, item: dict[str, Any]) -> Response:
        """The suggested (consensus) mask of a flagged mask: a cyan outline over a faint fill."""
        if not item.get("suggestion_uid"):
            raise HTTPException(404, "this annotation has no suggested mask")
        try:
            m = self.review.suggested_mask(item)
        except RevisionError as e:
            raise HTTPException(422, f"cannot read the suggested mask: {e}") from None
        return self.png(self.outline(m, (0, 200, 255, 50), (0, 230, 255, 255)))

    def at_slice(self, item: dict[str, Any], k: int | None) -> dict[str, Any]:
        """The item on slice ``k`` of its series (a volume item; None: where its page opens); 422 for a
        slice out of range or asked of a one-frame item."""
        if k is None and not is_volume_item(item):
            return item
        try:
            uid, frame = slice_source(item, opening_slice(item) if k is None else k)
        except VolumeItemError as e:
            raise HTTPException(e.status, str(e)) from None
        return {**item, "image_uid": uid, "frame": frame}

    def volume_mask(self, item: dict[str, Any], k: int | None, suggested: bool) -> Response:
        """The given (or suggested) segment of a volume item on slice ``k``, drawn as the 2-D ones are."""
        k = opening_slice(item) if k is None else k
        try:
            m = (self.review.volume_masks.suggested if suggested else self.review.volume_masks.given)(item, k)
        except VolumeItemError as e:
            raise HTTPException(e.status, f"cannot read the {'suggested' if suggested else 'given'} mask: {e}") \
                from None
        if suggested:
            return self.png(self.outline(m, (0, 200, 255, 50), (0, 230, 255, 255)))
        return self.png(self.outline(m, (255, 40, 40, 110), (255, 220, 0, 255)))

    @staticmethod
    def outline(m: np.ndarray, fill: tuple[int, ...], edge: tuple[int, ...]) -> np.ndarray:
        """An RGBA overlay of a bool mask: ``fill`` inside, ``edge`` on its boundary."""
        rgba = np.zeros((*m.shape, 4), np.uint8)
        rgba[m] = fill
        rim = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        rgba[rim] = edge
        return rgba
