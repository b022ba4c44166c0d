// Stand-in for the header a CUDA build of torch generates (its CPU wheels lack it); see ../../../cusparse.h.
#pragma once
