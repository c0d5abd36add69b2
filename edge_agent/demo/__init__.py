"""Demo assets for edge-agent: a procedural "shapes" data generator and tiny ONNX demo models.

``edge_agent.demo.shapes`` generates seeded synthetic scenes (circles, squares, triangles,
stars) with exact ground truth (boxes, masks, vertex keypoints).  It depends on numpy and
OpenCV only and is used at runtime by the self-test and by the test-suite.

``edge_agent/demo/models/*.onnx`` are small models trained on that data, exported in the
same layout as ultralytics YOLOv8/YOLO11 ONNX exports (see ``docs/demo-models.md``).
"""
