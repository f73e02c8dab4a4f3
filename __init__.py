"""Idiolect: tune a language model to one person's writing, on their own machine.

The repository root is the ``idiolect`` package (pyproject maps it), so an installed copy claims one top-level
name, ``idiolect``, and keeps the product's layout: ``idiolect.core`` (training, data, export; never imports
Gradio), ``idiolect.app`` (the Gradio UI over core), ``idiolect.bench`` (benchmarks, imported only by ``bench``
commands), ``assets/`` (the bundled peer pool, prompts, the app's CSS) as package data, and ``launch.py`` as
``idiolect.launch``.
"""
