"""The JSON answers of the API (pydantic models: they document ``/docs`` and ``/openapi.json``)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ImageSize(BaseModel):
    width: int = Field(description="pixels, EXIF orientation applied")
    height: int


class DetectionOut(BaseModel):
    box: list[float] = Field(description="[x1, y1, x2, y2] in pixels of the uploaded image (EXIF orientation applied)")
    score: float = Field(description="probability of the class, in [0, 1]")
    label: int = Field(description="class id of the model")
    name: str = Field(description="class name")
    query: int = Field(description="index of the object query that found it (row of the decoder attention)")


class DetectResponse(BaseModel):
    image: ImageSize
    detections: list[DetectionOut] = Field(description="sorted by decreasing score")
    model: str


class AttentionMapOut(BaseModel):
    shape: list[int] = Field(description="[h, w]: the feature grid (the image / 32, or / 16 for DC5 models)")
    extent: list[float] = Field(description="[x1, y1, x2, y2]: the image pixels the grid covers (stretch the map to it)")
    values: list[list[float]] = Field(description="[h, w] attention weights (rows of cells)")
    png: str | None = Field(None, description="data:image/png;base64 heatmap of the map (viridis, from its minimum "
                                              "to its maximum), when asked with png=true")


class DetectionAttention(DetectionOut):
    decoder: AttentionMapOut | None = Field(None, description="the query's cross-attention over the feature grid")


class PointAttention(BaseModel):
    x: float
    y: float
    cell: list[int] = Field(description="[row, column] of the feature cell holding the point")
    encoder: AttentionMapOut = Field(description="encoder self-attention at the point")


class AttentionResponse(BaseModel):
    image: ImageSize
    model: str
    input_size: ImageSize = Field(description="the resized image the model saw")
    feature_size: list[int] = Field(description="[h, w] of the feature grid")
    stride: int = Field(description="input pixels per feature cell")
    direction: str = Field(description="'to': how much every cell attends to the point (the original notebook's view); "
                                       "'from': where the point attends")
    detections: list[DetectionAttention]
    points: list[PointAttention]


class ClassOut(BaseModel):
    id: int
    name: str


class InputSize(BaseModel):
    shorter_side: int
    max_size: int


class Limits(BaseModel):
    max_upload_mb: float
    max_pixels: int
    queue: int
    workers: int


class ModelInfo(BaseModel):
    name: str
    runtime: str = Field(description="pytorch or onnxruntime")
    device: str
    precision: str = Field(description="dtype of the weights (float32, bfloat16, …); 'exported' for ONNX files")
    attention: bool = Field(description="whether /v1/attention works (PyTorch models only)")
    threshold: float = Field(description="default score threshold")
    input_size: InputSize
    classes: list[ClassOut]
    palette: list[str] = Field(description="box colours by class id: palette[label % len(palette)] (as detr predict draws)")
    limits: Limits


class Health(BaseModel):
    status: str
    queue_depth: int
