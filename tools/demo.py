"""The demo: a synthetic CT dataset through the whole pipeline. Filled in as packages land."""
print("demo: nothing yet")
