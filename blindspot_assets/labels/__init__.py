"""Concept names from a vision-language model: ``vlm`` loads and prompts it, ``naming``
picks the images, crops them to the concept and reduces the captions to a name."""
