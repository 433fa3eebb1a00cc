"""The CUDA sources of ds2's CTC kernel, installed as the package data of ds2.cuda.

setup.cfg maps this folder to the package ``ds2.cuda`` so that the .cu/.cuh/.cpp/.h files
travel with every install (editable or not); ds2.ctc compiles them on first use.
"""
