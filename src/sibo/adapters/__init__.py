"""PEFT methods that peft itself lacks, registered with peft on import of their subpackage.

`sibo.adapters.bottleneck`: the bottleneck adapters of LLM-Adapters (AdapterH, AdapterP, parallel).
"""
