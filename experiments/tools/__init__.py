"""Measuring tools: speed, memory and GPU checks, reported by benchmarks, never by tests.

`step_timing` (the trainer's own jitted step and the decode loop, behind `python -m
experiments.benchmark`), `peer_bench` (vlax's child of the peer harness in shared/peers),
`loss_memory` (compiled memory of the contrastive loss implementations), `gpu_check` with
`gpu_check.sh` (parity and timing of the GPU paths on a machine with an NVIDIA GPU).
"""
