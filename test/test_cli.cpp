#define BOOST_TEST_MODULE cli
#include <boost/test/unit_test.hpp>
BOOST_AUTO_TEST_CASE(pending) { BOOST_TEST(false, "suite cli not written yet"); }
