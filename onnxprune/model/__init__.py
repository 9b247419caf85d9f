"""The model stage: reading, normalising and writing ONNX files.

    graph.py   Model (normalised proto + analysis graph with concrete shapes), load_model,
               input shapes, shape completion
    files.py   read_model, save_model, atomic writes, writable checks, models over 2 GiB
    quant.py   integer weights behind DequantizeLinear (zero points, scales)
"""
