# Sourced by the GPU scripts on a lent machine without network: what benchmarks/gpu_prepare.sh packed
# into .gpu/ becomes importable and findable. Safe to source where .gpu/ is absent (it does nothing).
#   - .gpu/wheels/*.whl      installed into /tmp/site (~15 s), put first on PYTHONPATH
#   - .gpu/data, .gpu/minilm SIBO_DATA_DIR and MINILM_TOKENIZER, unless already set
#   - .gpu/gguf.part         joined after /root/partA (an earlier call's copy of the GGUF's first
#                            58,000,000 bytes) into /tmp/SmolLM2-135M-Instruct.Q4_1.gguf, md5-checked:
#                            SMOLLM2_GGUF names it
if [ -d .gpu/wheels ]; then
    "${PYTHON:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .gpu/wheels/*.whl || return 2
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
[ -d .gpu/data ] && export SIBO_DATA_DIR="${SIBO_DATA_DIR:-$PWD/.gpu/data}"
[ -d .gpu/minilm ] && export MINILM_TOKENIZER="${MINILM_TOKENIZER:-$PWD/.gpu/minilm}"
if [ -f .gpu/gguf.part ]; then
    if [ ! -f /root/partA ]; then
        echo "gpu_env: /root/partA is gone (the machine went cold between the two calls): stop here" >&2
        return 2
    fi
    cat /root/partA .gpu/gguf.part > /tmp/SmolLM2-135M-Instruct.Q4_1.gguf
    echo "a1231443440b107ff29f02bdb38c9d0a  /tmp/SmolLM2-135M-Instruct.Q4_1.gguf" | md5sum -c --quiet || return 2
    export SMOLLM2_GGUF=/tmp/SmolLM2-135M-Instruct.Q4_1.gguf
fi
