// Leaks through libstdc++ (built without frame pointers on Debian), after a warm-up of deep
// direct allocations that makes frame pointers look usable (issue 11). Each leak comes from its
// own function called by main; the program reports what it leaked.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#define NOINLINE __attribute__((noinline))

struct Obj {
    char payload[48];
};

static std::vector<void *> keep;
void *volatile sink;

NOINLINE static void warm(int depth) {
    if (depth > 0) {
        warm(depth - 1);
        return;
    }
    void *p = std::malloc(64);
    sink = p;
    std::free(p);
}

NOINLINE void leak_new_obj() {
    for (int i = 0; i < 5; i++) keep.push_back(new Obj());
}

NOINLINE void leak_string() {
    for (int i = 0; i < 8; i++) keep.push_back(new std::string(200, 'x'));
}

NOINLINE void leak_vector_reserve() {
    for (int i = 0; i < 6; i++) {
        auto *v = new std::vector<int>();
        v->reserve(100);
        keep.push_back(v);
    }
}

NOINLINE void leak_map() {
    auto *m = new std::map<int, long>();
    for (int i = 0; i < 7; i++) (*m)[i] = i;
    keep.push_back(m);
}

int main() {
    keep.reserve(64);
    for (int i = 0; i < 3000; i++) warm(12);
    leak_new_obj();
    leak_string();
    leak_vector_reserve();
    leak_map();
    // A std::string of 200 chars: the object (32 bytes) and its buffer (201). A vector<int>
    // object (24) and its reserved storage (400). A map (48) and 7 nodes (48 each, libstdc++).
    std::printf("{\"sites\": {\"leak_new_obj\": {\"bytes\": %zu, \"count\": 5}, "
                "\"leak_string\": {\"bytes\": %zu, \"count\": 16}, "
                "\"leak_vector_reserve\": {\"bytes\": %zu, \"count\": 12}, "
                "\"leak_map\": {\"bytes\": %zu, \"count\": 8}}}\n",
                5 * sizeof(Obj), 8 * (sizeof(std::string) + 201), 6 * (sizeof(std::vector<int>) + 400),
                sizeof(std::map<int, long>) + 7 * 48);
    return 0;
}
