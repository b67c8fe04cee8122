"""Evaluation, below the engine: COCO AP exactly as pycocotools computes it.

- ``checks``: IoU types, backends, ``CocoFormatError`` and the checks inputs share
- ``tables``: the 12 COCO stat names (the project's one list) and printed tables
- ``results``: predictions → COCO results (boxes xywh, masks RLE); results-file validation
- ``ground_truth``: a COCO annotation file read and checked for evaluation
- ``coco``: ``run_coco_eval``, per-class AP, ``CocoEvaluator`` (what the evaluation loop feeds)
- ``results_file``: ``evaluate_results_file`` (a detections file against its ground truth, no model)
"""
