// Leaks through C++ operator new, new[] and aligned new, which reach leaktrace through
// libstdc++'s calls to malloc / aligned_alloc: the stack has operator new between the
// allocation function and leak_new. Churns std containers, all freed.
//
// Prints one JSON line: per leaking function the bytes and objects it leaked.
#include <cstdio>
#include <map>
#include <new>
#include <string>
#include <vector>

#define NOINLINE __attribute__((noinline))

struct Widget {
    char payload[72];
    long id;
};

struct alignas(64) Aligned {
    char payload[192];
};

void *volatile sink;

struct Count {
    unsigned long bytes = 0, count = 0;
    void add(void *p, unsigned long n) {
        sink = p;
        bytes += n;
        count++;
    }
};

// A destructor makes new[] store the element count before the array: operator new[] is asked for
// 10 * sizeof(WithDtor) plus a cookie of sizeof(size_t) (Itanium C++ ABI, alignment <= 8).
struct WithDtor {
    long v[3];
    ~WithDtor() { sink = this; }
};

static Count c_new, c_new_array, c_new_aligned, c_new_dtor_array, c_new_nothrow;

NOINLINE void leak_new() {
    for (int i = 0; i < 5; i++) c_new.add(new Widget(), sizeof(Widget));
}

// char has a trivial destructor, so new[] asks operator new[] for exactly n bytes (no cookie).
NOINLINE void leak_new_array() {
    for (int i = 0; i < 3; i++) {
        unsigned long n = 3000 + 10 * i;
        c_new_array.add(new char[n], n);
    }
}

// Over-aligned new goes through operator new(size_t, align_val_t), i.e. aligned_alloc.
NOINLINE void leak_new_aligned() {
    for (int i = 0; i < 4; i++) c_new_aligned.add(new Aligned(), sizeof(Aligned));
}

NOINLINE void leak_new_dtor_array() {
    for (int i = 0; i < 2; i++) c_new_dtor_array.add(new WithDtor[10], 10 * sizeof(WithDtor) + sizeof(size_t));
}

// The nothrow variants: operator new[](size_t, nothrow_t const&), operator new(size_t,
// align_val_t, nothrow_t const&).
NOINLINE void leak_new_nothrow() {
    for (int i = 0; i < 3; i++) c_new_nothrow.add(new (std::nothrow) char[777], 777);
    c_new_nothrow.add(new (std::nothrow) Aligned(), sizeof(Aligned));
}

NOINLINE void churn() {
    for (int round = 0; round < 200; round++) {
        std::vector<std::string> v;
        std::map<int, std::string> m;
        for (int i = 0; i < 100; i++) {
            v.push_back(std::string(20 + i, 'x'));
            m[i] = v.back();
        }
        delete new Widget();
        delete[] new char[500];
        delete new Aligned();
    }
}

int main() {
    churn();
    leak_new();
    leak_new_array();
    leak_new_aligned();
    leak_new_dtor_array();
    leak_new_nothrow();
    churn();
    std::printf("{\"sites\":{\"leak_new\":{\"bytes\":%lu,\"count\":%lu},"
                "\"leak_new_array\":{\"bytes\":%lu,\"count\":%lu},"
                "\"leak_new_aligned\":{\"bytes\":%lu,\"count\":%lu},"
                "\"leak_new_dtor_array\":{\"bytes\":%lu,\"count\":%lu},"
                "\"leak_new_nothrow\":{\"bytes\":%lu,\"count\":%lu}},\"not_leaking\":[\"churn\"]}\n",
                c_new.bytes, c_new.count, c_new_array.bytes, c_new_array.count, c_new_aligned.bytes,
                c_new_aligned.count, c_new_dtor_array.bytes, c_new_dtor_array.count, c_new_nothrow.bytes,
                c_new_nothrow.count);
    return 0;
}
