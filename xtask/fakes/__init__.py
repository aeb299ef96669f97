"""The fakes and fixtures of engines: a live orchestratord with a real llama-server, the TGI
protocol fake, a Triton server, and the generated model files.
"""
