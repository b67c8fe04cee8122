"""Pictures of what a model does: detections drawn on images, attention maps, training-log and PR plots.

``draw`` uses ``torchvision.utils.draw_bounding_boxes``; the figure modules (``attention_plots``,
``logs``, ``precision_recall``) use matplotlib with its non-interactive Agg canvas.
"""
