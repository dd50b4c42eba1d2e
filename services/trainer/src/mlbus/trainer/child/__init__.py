"""The program a job's child process runs (``python -m mlbus.trainer.child TASK.json``).

Importing this package is cheap; the heavy libraries (pandas, scikit-learn, skl2onnx, ONNX
Runtime) are imported by the modules that run inside the child only.
"""
