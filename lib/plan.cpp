// plan.cpp — to be written
