import logging

# Keep roomcast's logs visible in failure reports without flooding them.
logging.getLogger("roomcast").setLevel(logging.INFO)
logging.getLogger("roomcast.picows").setLevel(logging.WARNING)
