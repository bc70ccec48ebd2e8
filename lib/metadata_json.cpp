// metadata_json.cpp — to be written
