"""Small shared pieces: image conversion (:mod:`.image_utils`), atomic files (:mod:`.file_utils`), model loading
(:mod:`.loading`), launch detection (:mod:`.distributed`) and lazy exports (:mod:`.import_utils`)."""
