// load_job.cpp — to be written
